"""Opening a run: the model loaded, its gate bounds resolved once (the calibration's, the explicit
options on top), the editor set up, the unedited baselines measured on first need.

    run = open_run(RunConfig.from_options(...))
    run.gates.thresholds, run.gates.calibration      # what gates this model, and why
    run.editor                                       # set up on first use (hparams checked, MEND trained?)
    run.baseline("me-ppl-50")                        # the unedited perplexity, once per corpus

Both front ends open their runs here: the plugin (one per session and xdist worker) and the CLI
commands that edit or measure. This module sits above curation (layer 6, not 5 as the rest of
run/): the bounds come from the model's calibration (editguard.calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editguard.calibration import calibrated_thresholds, calibration_note, find_calibration, serves
from editguard.errors import UsageError
from editguard.gates import Thresholds
from editguard.options import DEFAULT_EDITOR, OPTIONS_BY_NAME
from editguard.run.config import RunConfig


@dataclass(frozen=True)
class GateBounds:
    """The bounds that gate this run's model, where they come from (the report header's sentence),
    and a warning when defaults serve a model they were not calibrated on ('' otherwise)."""
    thresholds: Thresholds
    calibration: str
    warning: str = ""


def resolve_gates(config: RunConfig, model_name: str, fingerprint: str) -> GateBounds:
    """The model's calibration that serves the editor (its own, or ROME's for a ROME variant:
    editguard.calibration.CALIBRATION_SERVES; where one is stored, and only for the editor's default
    hyperparameters), with the explicitly given gate options on top. The note says which bounds
    apply and why; another editor's calibration that does not serve this one is named in the warning."""
    calibration = unserved = None
    if not config.hparams:
        calibration = find_calibration(model_name, fingerprint, config.editor)
        if calibration is None and not serves(DEFAULT_EDITOR, config.editor):
            unserved = find_calibration(model_name, fingerprint, DEFAULT_EDITOR)
    thresholds = calibrated_thresholds(config.thresholds, calibration, config.explicit_thresholds)
    note, warning = calibration_note(model_name, calibration, hparams_given=bool(config.hparams),
                                     editor=config.editor, unserved=unserved)
    if config.explicit_thresholds:
        note += "; given explicitly: " + ", ".join(sorted(config.explicit_thresholds))
    return GateBounds(thresholds, note, warning)


def apply_prepared(config: RunConfig, model):
    """The model at the edit layer `editguard prepare` traced for its weights (unless --edit-layer
    is given), and the report header's sentence: which prepared files, for which fingerprint, made
    when; with nothing prepared, the one command that prepares the model."""
    from dataclasses import replace

    from editguard.prepared import find_prepared, prepare_command

    prepared = find_prepared(model.fingerprint)
    if prepared is None:
        return model, f"nothing prepared for fingerprint {model.fingerprint}: run `{prepare_command(model.name)}`"
    if config.edit_layer is None and prepared.layer is not None and prepared.layer != model.edit_layer:
        model = replace(model, edit_layer=prepared.layer)
    return model, prepared.describe()


class Run:
    """One opened run: its config, model and gate bounds; the editor and the baselines on first use;
    `prepared` says what `editguard prepare` made for the model's weights (or the command to run)."""

    def __init__(self, config: RunConfig, model, gates: GateBounds, prepared: str = ""):
        self.config, self.model, self.gates, self.prepared = config, model, gates, prepared
        from editguard.models.precision import resolve_precision

        # What --editguard-edit-precision means on this model and machine (auto resolved once).
        self.edit_precision = resolve_precision(model, config.edit_precision, "--editguard-edit-precision")
        self._editor = None
        self._baselines: dict[str, Any] = {}
        self._probe = None

    @property
    def editor(self):
        """The editor under test, its hyperparameters resolved for the model up front (a bad
        --hparams key fails here, once, with the list of valid keys), checked against
        --batch-size, and prepared (MEND's trained network). An editor with a v* search
        (hyperparameter v_precision) runs it in the run's edit precision, unless --hparams names one."""
        if self._editor is None:
            from editguard.editors.api import check_batch_size, editor_hparams, prepare_editor
            from editguard.editors.registry import get_editor

            c = self.config
            editor = get_editor(c.editor, c.hparams, data_dir=c.data_dir)
            check_batch_size(editor, c.batch_size)
            hparams = editor_hparams(editor, self.model)
            if "v_precision" in hparams and "v_precision" not in c.hparams \
                    and hparams["v_precision"] != self.edit_precision:
                editor = get_editor(c.editor, {**c.hparams, "v_precision": self.edit_precision}, data_dir=c.data_dir)
                editor_hparams(editor, self.model)
            prepare_editor(editor, self.model)
            self._editor = editor
        return self._editor

    def probe(self):
        """The downstream probe (--downstream): task subsets and the unedited model's scores, taken
        once (and cached on disk across workers and sessions); None without --downstream."""
        c = self.config
        if c.downstream and self._probe is None:
            from editguard.metrics.downstream import prepare_probe

            self._probe = prepare_probe(self.model, list(c.downstream), c.downstream_n, c.data_dir,
                                        min_retention=c.downstream_min_retention, precision=c.downstream_precision,
                                        limit=c.downstream_limit)
        return self._probe

    def baseline(self, corpus: str):
        """The unedited model's measurements on `corpus` (perplexity, weight digests, the downstream
        probe), taken once per corpus."""
        if corpus not in self._baselines:
            from editguard.data import load_ppl_corpus
            from editguard.guard import measure_baseline

            sentences = load_ppl_corpus(corpus, self.config.data_dir, download=self.config.download)
            baseline = measure_baseline(self.model, sentences, corpus, shared=True, bos=self.config.ppl_bos,
                                        precision=self.edit_precision)
            baseline.downstream = self.probe()
            self._baselines[corpus] = baseline
        return self._baselines[corpus]


def open_run(config: RunConfig) -> Run:
    """Set torch's threads (config.threads), load the model and resolve its gate bounds; errors are
    editguard's (model load, usage). With --editguard-stats-dir the editor is set up now, so that
    its statistics files are found and checked (or refused, as a usage error) before any test."""
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    model, prepared = apply_prepared(config, config.load_model())
    check_hparams_family(config, model.name, model.family.name)
    gates = resolve_gates(config, model.name, model.fingerprint)
    if gates.warning and prepared.startswith("nothing prepared"):
        command = prepared.split(": ", 1)[1]
        gates = GateBounds(gates.thresholds, gates.calibration,
                           f"{gates.warning}; or prepare everything the model needs at once: {command}")
    run = Run(config, model, gates, prepared)
    if config.hparams.get("mom2_stats_dir"):
        check_statistics(run)
    return run


def check_statistics(run: Run) -> None:
    """The editor set up (its statistics found and checked, editguard.editors.covariance.plan_statistics);
    a statistics file missing, ambiguous or malformed is a UsageError naming the option. Any other
    set-up error is left for the editor's first use, which says it as it does without statistics."""
    from editguard.editors.covariance import StatsFileError
    from editguard.errors import EditguardError

    try:
        run.editor
    except StatsFileError as err:
        option = OPTIONS_BY_NAME["stats-dir"]
        raise UsageError(f"{option.pytest_flag} ({option.cli_flag} on the command line): {err}") from None
    except (EditguardError, ValueError):
        return


def check_hparams_family(config: RunConfig, model_name: str, family: str) -> None:
    """An EasyEdit --hparams file tuned for another family's model is refused, naming both."""
    if config.hparams_families and family not in config.hparams_families and not config.hparams_any_family:
        option = OPTIONS_BY_NAME["hparams-any-family"]
        raise UsageError(f"the --hparams file is for the {'/'.join(config.hparams_families)} family (its module "
                         f"templates), but model {model_name} is of the {family} family: its layers and tuned values "
                         f"are another model's. Use a file for {family}, or pass "
                         f"{option.pytest_flag} ({option.cli_flag} on the command line) to use its values anyway")
