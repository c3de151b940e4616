"""Normal CounterFact cases (the papers' control group): the subject does not start the prompt."""

from editguard.suites import counterfact_normal


def edit_cases(settings):
    return counterfact_normal(settings.data_dir, download=settings.download)


def test_edit_keeps_model_intact(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
