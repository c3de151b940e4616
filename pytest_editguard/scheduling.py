"""The unit of work of a run, for pytest-xdist scheduling and for shards: one for a whole
sequence, one per test otherwise. xdist scheduling never splits a sequence: the steps of a sequential suite module
build on each other, so they all go to one worker, in collection order; every other test is
distributed one by one, as `--dist load` does.

xdist's own `--dist loadgroup` cannot be relied on for this: with pytest ≥ 9.2 the node-id suffix
it adds on the workers is lost (pytest renamed the attribute xdist writes), and groups split
silently. This scheduler needs nothing from the workers: a sequence step is recognised by the
id the plugin gives it (`[stepNN-...]`, see plugin.pytest_generate_tests).

A worker that dies (os._exit, an OOM kill, a segfault) loses the test it was running: that test is
not run again (a deterministic crash would take down worker after worker); the plugin records it as
an error. What the dead worker had queued goes back to the queue for the others (a fresh worker
replaces it), except the later steps of a sequence it had started: without their earlier edits they
would measure something else, so they are not run and the report lists them. xdist's own
LoadScopeScheduling (and so --dist loadscope/loadfile) puts the dead worker's finished units back
in the queue too, and the worker that gets one waits forever for a test to finish: the whole run
hangs. `after_worker_loss` decides what happens instead.
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


def file_unit(nodeid: str) -> str:
    """--dist loadfile's unit: the test file."""
    return nodeid.split("::", 1)[0]


def scope_unit(nodeid: str) -> str:
    """--dist loadscope's unit: the module, or the class of a method."""
    return nodeid.rsplit("::", 1)[0]


def _is_step(nodeid: str) -> bool:
    return bool(SEQUENCE_STEP_ID.search(nodeid))


def after_worker_loss(workload: dict[str, dict[str, bool]]) -> tuple[str | None, dict[str, dict[str, bool]], list[str]]:
    """What becomes of a dead worker's `workload` (unit -> {test id: finished}, in the order it
    was sent): (the test it was running, or None where it had finished all it was given; the
    units to queue again, holding only their unfinished tests; the tests not run at all: the
    later steps of a sequence whose earlier steps ran, or crashed, on that worker)."""
    crashed = next((nodeid for unit in workload.values() for nodeid, done in unit.items() if not done), None)
    started = {file_unit(nodeid) for unit in workload.values() for nodeid, done in unit.items()
               if _is_step(nodeid) and (done or nodeid == crashed)}
    requeue: dict[str, dict[str, bool]] = {}
    dropped: list[str] = []
    for scope, unit in workload.items():
        for nodeid, done in unit.items():
            if done or nodeid == crashed:
                continue
            if _is_step(nodeid) and file_unit(nodeid) in started:
                dropped.append(nodeid)
            else:
                requeue.setdefault(scope, {})[nodeid] = False
    return crashed, requeue, dropped


def sequence_aware_scheduler(config, log, unit=work_unit):
    """xdist's LoadScopeScheduling with `unit` as the scope (`work_unit` for --dist load; the file
    or the scope for loadfile and loadscope) and a dead worker's work handled by
    `after_worker_loss` (xdist imported only here, when pytest-xdist runs the session)."""
    from xdist.scheduler import LoadScopeScheduling

    class SequenceAwareScheduling(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            # The test a dead worker was running -> the tests its death leaves unrun.
            self.not_run_after_crash: dict[str, list[str]] = {}

        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

        def remove_node(self, node) -> str | None:
            crashed, requeue, dropped = after_worker_loss(self.assigned_work.pop(node))
            if crashed is None:
                return None
            self.not_run_after_crash[crashed] = dropped
            self.workqueue.update(requeue)
            for other in self.assigned_work:
                self._reschedule(other)
            return crashed

    return SequenceAwareScheduling(config, log)
