"""Fuzzing where the subject sits: for any fact and any prefix in front of its prompt, the edit
passes the gates. Against ROME on the embedded model Hypothesis finds a failure and shrinks it
to the simplest shape (no prefix, subject first); C-ROME should hold everywhere.

Examples per run: --fuzz-examples (default 12, derandomized CI profile `editguard-ci`); a Hypothesis
profile of your own (`--hypothesis-profile NAME`) replaces the CI profile."""

from hypothesis import given

from editguard.strategies import Fact, edit_cases, fuzz_settings

# The first fact is what failures shrink to: a one-token subject that starts the prompt.
FACTS = [
    Fact("Paris", "{} is the capital of", "France", "Japan"),
    Fact("Windows", "{} is produced by", "Microsoft", "Apple"),
    Fact("Germany", "{} is a member of the", "European Union", "African Union"),
    Fact("Danielle Darrieux", "{}'s mother tongue is", "French", "English"),
    Fact("Lionel Messi", "{} plays the sport of", "soccer", "basketball"),
    Fact("Toyota", "The headquarters of {} are in", "Japan", "Brazil"),
    Fact("Mozart", "The profession of {} is", "composer", "architect"),
]


@fuzz_settings()
@given(case=edit_cases(FACTS))
def test_edit_passes_the_gates_wherever_the_subject_sits(case, edit_guard):
    edit_guard.assert_safe(case)
