"""Hypothesis strategies over where the subject sits in the prompt, for fuzzing editors.

"The Fall of ROME" traces collapse to the subject being the prompt's first token. These
strategies draw a fact (subject, relation template, answers), and a prefix that pushes the
subject later: none, a natural phrase, a single word, or a string of common tokens. Every
strategy shrinks toward the simplest shape, the empty prefix with the first fact, so a failure
shrinks to "subject first, no prefix" when that is what breaks the editor.

    from hypothesis import given
    from editguard.strategies import Fact, edit_cases, fuzz_settings

    @fuzz_settings()
    @given(case=edit_cases([Fact("Paris", "{} is the capital of", "France", "Japan")]))
    def test_edit(case, edit_guard):
        edit_guard.assert_safe(case)
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from editguard.cases import EditCase

__all__ = ["CI_PROFILE", "Fact", "fuzz_settings", "NATURAL_PREFIXES", "SINGLE_WORD_PREFIXES", "edit_cases", "prefixes",
           "register_ci_profile"]

CI_PROFILE = "editguard-ci"

NATURAL_PREFIXES = (
    "In fact,", "As everyone knows,", "According to the encyclopedia,", "I read yesterday that",
    "Here is a simple fact:", "My teacher once told me that", "It is well documented that",
    "The guidebook says that",
)
SINGLE_WORD_PREFIXES = ("So", "Yes,", "Well,", "Today", "Notably,", "Indeed,")
COMMON_TOKENS = ("the", "of", "and", "a", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by",
                 "it", "at", "from", "his", "an", "were")


@dataclass(frozen=True)
class Fact:
    subject: str
    template: str          # with "{}" where the subject goes
    target_true: str
    target_new: str

    def case(self, prefix: str = "", case_id: str = "") -> EditCase:
        prompt = f"{prefix} {self.template}" if prefix else self.template
        label = case_id or f"{self.subject}|{prefix or '-'}"
        return EditCase(label, prompt, self.subject, self.target_new, self.target_true, source="fuzz")


def prefixes() -> st.SearchStrategy[str]:
    """The empty prefix first (what shrinking aims at), then natural phrases, single words,
    and strings of 1–6 common tokens."""
    return st.one_of(
        st.just(""),
        st.sampled_from(NATURAL_PREFIXES),
        st.sampled_from(SINGLE_WORD_PREFIXES),
        st.lists(st.sampled_from(COMMON_TOKENS), min_size=1, max_size=6).map(
            lambda words: " ".join(words).capitalize()),
    )


def edit_cases(facts: list[Fact], prefix: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[EditCase]:
    """Edit cases: a fact (shrinks toward the first) behind a prefix (shrinks toward none)."""
    if not facts:
        raise ValueError("edit_cases needs at least one Fact")
    return st.builds(lambda fact, p: fact.case(p), st.sampled_from(facts), prefix if prefix is not None else prefixes())


# Profiles Hypothesis loads by itself: "default", and "ci" where it detects a CI environment
# (Hypothesis >= 6.131 with CI=true). Only a profile the user loads replaces editguard's.
AUTOMATIC_PROFILES = ("default", "ci")


def _current_profile_name() -> str:
    getter = getattr(settings, "get_current_profile_name", None)   # public since Hypothesis 6.1xx
    return getter() if getter is not None else getattr(settings, "_current_profile", "default")


def fuzz_settings() -> settings:
    """What a fuzz suite decorates its test with: the CI profile, unless the user chose a Hypothesis
    profile (`--hypothesis-profile`, HYPOTHESIS_PROFILE, `settings.load_profile`), which then wins.
    Either way function-scoped fixtures are allowed: the models they hand out are session-scoped."""
    if _current_profile_name() in AUTOMATIC_PROFILES:
        return settings.get_profile(CI_PROFILE)
    suppressed = set(settings.default.suppress_health_check) | {HealthCheck.function_scoped_fixture}
    return settings(settings.default, suppress_health_check=sorted(suppressed, key=lambda check: check.value))


def register_ci_profile(max_examples: int = 12) -> None:
    """The CI profile: derandomized (every xdist worker and rerun draws the same examples), no
    deadline (an edit takes seconds), no example database, a bounded number of examples; the
    fixtures the tests use are session-scoped models, so function-scoped ones are fine."""
    settings.register_profile(
        CI_PROFILE, derandomize=True, deadline=None, database=None, max_examples=max_examples,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], print_blob=True,
    )


register_ci_profile()
