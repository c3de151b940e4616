"""The control sequence: normal CounterFact cases (subject not first), a seeded sample as long as
the hard sequence (--sequence-length), edited one after another on the same terms."""

from editguard.options import DEFAULT_SEQUENCE_LENGTH
from editguard.suites import normal_sample

EDITGUARD_SEQUENTIAL = True


def edit_cases(settings):
    return normal_sample(settings.sequence_length or DEFAULT_SEQUENCE_LENGTH, settings.data_dir, settings.download)


def test_step_keeps_model_intact(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
