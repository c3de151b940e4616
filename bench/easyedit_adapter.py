"""EasyEdit's own ROME through the adapter (--editor=easyedit:ROME) against editguard's ROME
(--editor=rome), both from one EasyEdit hparams file, on the same cases (run on demand).

    python bench/easyedit_adapter.py --easyedit PATH --suite hardcf [--cases 3]
        [--hparams bench/easyedit-rome-smollm2-135m.yaml] [--model smollm2-135m]
        [--out bench/results/easyedit-adapter-smollm2-135m.json]
    python bench/easyedit_adapter.py --table [--out ...]     # the Markdown table of --out

PATH is an EasyEdit checkout (the folder that holds easyeditor/), run in a Python environment that
has EasyEdit's requirements and editguard. Each suite's rows replace that suite's rows in --out.

Per case: each editor's guarded verdict (the run's gates: with --hparams, the default bounds, as
the plugin uses them), perplexity, update norm and efficacy, and ‖ΔW_ee − ΔW_eg‖/‖ΔW_eg‖ and the
cosine of the two updates. EasyEdit's ROME runs twice: with the context templates it samples
itself (unseeded in EasyEdit; torch's seed is set to 0 here first), and with editguard's templates
put in EasyEdit's template cache (rome_main.CONTEXT_TEMPLATES_CACHE), which isolates the
algorithms from the sampled prefixes.

EasyEdit's package imports every method at `import easyeditor`; where that fails in this
environment (a dependency's version), the failure is recorded in the output and EasyEdit's ROME
modules (easyeditor.models.rome, easyeditor.util: EasyEdit's own code, unchanged) are imported
alone, with a registry holding ROME's apply function under ALG_DICT["ROME"] as EasyEdit's does.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import torch

from editguard.editors.easyedit import PATH_ENV, EasyEditUnavailable, import_easyedit
from editguard.guard import check
from editguard.options import OPTIONS_BY_NAME, SINGLE_EDIT_PPL_CORPUS
from editguard.report.verdicts import verdict
from editguard.run.config import RunConfig
from editguard.run.session import open_run
from editguard.suites import hardcf, normal_sample

HERE = Path(__file__).resolve().parent


START = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {message}", file=sys.stderr, flush=True)


class Recording:
    """The editor, keeping the last EditReport (its ΔW)."""

    def __init__(self, editor):
        self.editor, self.last = editor, None

    def __getattr__(self, name):
        return getattr(self.editor, name)

    def apply(self, mue, cases):
        self.last = self.editor.apply(mue, cases)
        return self.last


def load_easyedit(checkout: Path) -> dict:
    """EasyEdit importable for the adapter; how it was imported (and what failed first)."""
    os.environ[PATH_ENV] = str(checkout)
    try:
        registry = import_easyedit()
        return {"import": "easyeditor (whole package)", "alg_dict": sorted(registry.ALG_DICT)}
    except EasyEditUnavailable as err:
        failure = str(err)
    del os.environ[PATH_ENV]
    for name in [n for n in sys.modules if n.split(".")[0] == "easyeditor"]:
        del sys.modules[name]
    # Packages without their __init__ (which imports every method): only ROME's modules run.
    for name, folder in (("easyeditor", checkout / "easyeditor"),
                         ("easyeditor.models", checkout / "easyeditor" / "models")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    rome = importlib.import_module("easyeditor.models.rome")
    importlib.import_module("easyeditor.util")
    registry = types.ModuleType("easyeditor.util.alg_dict")
    registry.ALG_DICT = {"ROME": rome.apply_rome_to_model}
    sys.modules["easyeditor.util.alg_dict"] = registry
    return {"import": "easyeditor.models.rome and easyeditor.util alone (EasyEdit's code, unchanged)",
            "whole_package_failed": failure, "alg_dict": ["ROME"]}


def open_editor_run(model: str, editor: str, hparams: Path):
    options = {"model": model, "editor": editor, "hparams": str(hparams)}
    config = RunConfig.from_options(lambda name: options.get(name, OPTIONS_BY_NAME[name].default),
                                    lambda name: name in options)
    return open_run(config)


def outcome(result, ppl_max: float) -> dict:
    record = {"passed": result.verdict.passed, "ppl": result.ppl}
    return {"verdict": verdict(record, ppl_max), "failed_gates": [g.name for g in result.verdict.failed],
            "ppl": result.ppl, "update_norm_rel": result.diagnostics.get("update_norm_rel"),
            "efficacy": result.efficacy, "seconds": round(result.seconds, 2)}


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the machine type elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def table(doc: dict) -> str:
    """One Markdown row per case: the three verdicts, ‖ΔW‖/‖W‖, and EasyEdit's ΔW against editguard's."""
    lines = ["| suite | case | editguard ROME | EasyEdit ROME, its templates | EasyEdit ROME, editguard's templates |",
             "|---|---|---|---|---|"]

    def cell(o: dict, diff: bool) -> str:
        text = f"{o['verdict']}, ppl {o['ppl']:.4g}, ‖ΔW‖/‖W‖ {o['update_norm_rel']:.3g}, {o['seconds']:.0f} s"
        return text + (f"; ΔW rel. diff {o['dw_rel_diff']:.2g}, cos {o['dw_cosine']:.3f}" if diff else "")

    for r in doc["rows"]:
        lines.append(f"| {r['suite']} | {r['case_id']} ({r['prompt']!r} → {r['target_new']!r}) | "
                     f"{cell(r['editguard_rome'], False)} | {cell(r['easyedit_rome_own_templates'], True)} | "
                     f"{cell(r['easyedit_rome_editguard_templates'], True)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easyedit", type=Path, help="EasyEdit checkout (holds easyeditor/)")
    parser.add_argument("--suite", choices=["hardcf", "counterfact"])
    parser.add_argument("--table", action="store_true", help="print --out's rows as a Markdown table and stop")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hparams", type=Path, default=HERE / "easyedit-rome-smollm2-135m.yaml")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "easyedit-adapter-smollm2-135m.json")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    if not (args.easyedit and args.suite):
        parser.error("--easyedit and --suite are needed to measure")

    how = load_easyedit(args.easyedit.resolve())
    progress(f"EasyEdit imported: {how['import']}")
    rome_main = importlib.import_module("easyeditor.models.rome.rome_main")
    eg_run = open_editor_run(args.model, "rome", args.hparams)
    ee_run = open_editor_run(args.model, "easyedit:ROME", args.hparams)
    mue = eg_run.model
    assert ee_run.model is mue
    thresholds = eg_run.gates.thresholds
    assert thresholds == ee_run.gates.thresholds
    eg, ee = Recording(eg_run.editor), Recording(ee_run.editor)
    progress("model and editors ready")
    baseline = eg_run.baseline(SINGLE_EDIT_PPL_CORPUS)
    progress(f"baseline on {SINGLE_EDIT_PPL_CORPUS}")
    data_dir = eg_run.config.data_dir
    hard = hardcf(args.model, data_dir, load=lambda: mue)
    progress("cases chosen")
    cases = list(hard if args.suite == "hardcf" else normal_sample(len(hard), data_dir))[: args.cases]

    from editguard.editors.keys import context_templates

    hp = eg.hparams(mue)
    eg_templates = context_templates(mue, tuple(map(tuple, hp["context_template_length_params"])), hp["template_seed"])
    torch.manual_seed(0)
    rows, ee_own_templates = [], None
    weight = f"model.layers.{hp['layer']}.mlp.down_proj.weight"
    for case in cases:
        row = {"suite": args.suite, "case_id": case.case_id, "prompt": case.text, "target_new": case.target_new}
        result = check(mue, eg, case, baseline, thresholds)
        progress(f"{case.case_id}: editguard's ROME")
        row["editguard_rome"] = outcome(result, thresholds.ppl_max)
        dw_eg = eg.last.vectors["delta_w"].float()
        for mode in ("own_templates", "editguard_templates"):
            if mode == "editguard_templates":
                rome_main.CONTEXT_TEMPLATES_CACHE = list(eg_templates)
            elif ee_own_templates is not None:
                rome_main.CONTEXT_TEMPLATES_CACHE = list(ee_own_templates)
            else:
                rome_main.CONTEXT_TEMPLATES_CACHE = None   # EasyEdit samples them on its first edit
            result = check(mue, ee, case, baseline, thresholds)
            progress(f"{case.case_id}: EasyEdit's ROME, {mode}")
            if mode == "own_templates":
                ee_own_templates = list(rome_main.CONTEXT_TEMPLATES_CACHE)
            dw_ee = ee.last.vectors[f"delta:{weight}"].float()
            row[f"easyedit_rome_{mode}"] = {
                **outcome(result, thresholds.ppl_max),
                "touched": ee.last.touched,
                "dw_rel_diff": float((dw_ee - dw_eg).norm() / dw_eg.norm()),
                "dw_cosine": float(torch.nn.functional.cosine_similarity(dw_ee.flatten(), dw_eg.flatten(), dim=0)),
                "dw_norm_ratio": float(dw_ee.norm() / dw_eg.norm()),
            }
        row["same_verdict"] = all(row[f"easyedit_rome_{m}"]["verdict"] == row["editguard_rome"]["verdict"]
                                  for m in ("own_templates", "editguard_templates"))
        rows.append(row)
        print(json.dumps(row), flush=True)

    doc = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    doc.update({
        "model": args.model, "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "hparams_file": str(args.hparams.relative_to(HERE.parent)
                                                         if args.hparams.is_relative_to(HERE.parent) else args.hparams),
        "easyedit": {**how, "checkout": str(args.easyedit)}, "ppl_corpus": SINGLE_EDIT_PPL_CORPUS,
        "thresholds": dataclasses.asdict(thresholds),
        "baseline_ppl": baseline.ppl.ppl,
        "templates": {"editguard": eg_templates, "easyedit_own": ee_own_templates},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    doc["rows"] = [r for r in doc["rows"] if r["suite"] != args.suite] + rows
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
