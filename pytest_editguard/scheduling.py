"""The unit of work of a run, for pytest-xdist scheduling and for shards: one for a whole
sequence, one per test otherwise. xdist scheduling never splits a sequence: the steps of a sequential suite module
build on each other, so they all go to one worker, in collection order; every other test is
distributed one by one, as `--dist load` does.

xdist's own `--dist loadgroup` cannot be relied on for this: with pytest ≥ 9.2 the node-id suffix
it adds on the workers is lost (pytest renamed the attribute xdist writes), and groups split
silently. This scheduler needs nothing from the workers: a sequence step is recognised by the
id the plugin gives it (`[stepNN-...]`, see plugin.pytest_generate_tests).
"""

from __future__ import annotations

import re

SEQUENCE_STEP_ID = re.compile(r"\[step\d+-")


def step_id(index: int, case_id: str, length: int = 0) -> str:
    """The pytest id of step `index` (1-based) of a sequence of `length` steps, zero-padded to the
    width of the last step (at least 2), so that ids sort in step order: step007 before step100."""
    width = max(2, len(str(length)))
    return f"step{index:0{width}d}-{case_id}"


def work_unit(nodeid: str) -> str:
    """A sequence step's unit is its module (the whole sequence); any other test is its own unit."""
    return nodeid.split("::")[0] if SEQUENCE_STEP_ID.search(nodeid) else nodeid


def sequence_aware_scheduler(config, log):
    """xdist's LoadScopeScheduling with `work_unit` as the scope (xdist imported only here, when
    pytest-xdist runs the session)."""
    from xdist.scheduler import LoadScopeScheduling

    class SequenceAwareScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return SequenceAwareScheduling(config, log)
