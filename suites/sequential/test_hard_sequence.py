"""Sequential editing over the hard list: each edit lands on the model the previous ones left,
perplexity (ME-PPL_1k unless --ppl-corpus says otherwise) is measured after every step (or every
--ppl-every K steps and the last), and the model is restored and verified after the last. The
papers saw nearly every editor collapse here. --sequence-length N takes the first N hard cases
(past the end of the mined list, the next structural candidates; editguard.suites.hard_sequence)."""

from editguard.options import DEFAULT_SEQUENCE_LENGTH
from editguard.suites import hard_sequence

EDITGUARD_SEQUENTIAL = True


def edit_cases(settings):
    n = settings.sequence_length or DEFAULT_SEQUENCE_LENGTH
    return hard_sequence(n, settings.model, settings.data_dir, settings.download, load=settings.load_model)


def test_step_keeps_model_intact(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
