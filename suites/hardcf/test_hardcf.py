"""HardCF: CounterFact cases of the shape that collapses a model with one ROME edit.

Until a list is mined for the model under test, the cases are CounterFact cases whose subject
starts the prompt, one-token subjects first (see editguard.suites).
"""

from editguard.suites import counterfact_hard


def edit_cases(settings):
    return counterfact_hard(settings.data_dir, settings.tokenizer(), download=settings.download)


def test_edit_keeps_model_intact(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
