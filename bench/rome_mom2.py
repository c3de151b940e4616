"""ROME with and without C⁻¹ (`mom2_adjustment`) on the first cases of a model's HardCF list:
both runs' verdicts side by side, in bench/results/rome-mom2-hardcf-<model>.json.

    flock /tmp/model-jobs.lock python bench/rome_mom2.py run            # smollm2-135m, first 10 cases
    python bench/rome_mom2.py table                                     # the Markdown table of the rows

`run` calls `pytest suites/hardcf/test_hardcf.py --editor=rome --editguard-max-cases N` twice, with
ROME's defaults (mom2_adjustment off, as the papers ran it) and with `--hparams
bench/rome-mom2.yaml` (mom2_adjustment on: C = E[kkᵀ] of the edit layer's keys over
mom2_n_tokens tokens of mom2_corpus, editguard's defaults 100,000 tokens of wikitext-2-raw, computed
and cached on the first edit), keeps both JSON reports whole in the results file and writes one
row per case: ME-PPL, verdict, failed gates, denominator (the unit C⁻¹k̄ or k̄ against the key used)
and its ratio to the same with k̄, ‖ΔW‖/‖W‖ and efficacy, off and on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lm_eval_parity import cpu_name  # a sibling script: bench/ is on the path when run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HPARAMS_ON = REPO / "bench" / "rome-mom2.yaml"
FIELDS = ("ppl", "passed", "failed_gates", "denominator_ratio", "update_norm_rel", "efficacy", "seconds")


def results_path(model: str) -> Path:
    return RESULTS / f"rome-mom2-hardcf-{model}.json"


def run_suite(model: str, n: int, hparams: Path | None, out: Path) -> tuple[dict, list[str]]:
    command = [sys.executable, "-m", "pytest", "suites/hardcf/test_hardcf.py", "--editor=rome", f"--model={model}",
               "--editguard-max-cases", str(n), "--editguard-json", str(out), "-q", "-p", "no:cacheprovider"]
    if hparams is not None:
        command += ["--hparams", str(hparams)]
    print(" ".join(command), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command, cwd=REPO, env=env, check=False)   # exit 1 when a case fails a gate: expected
    if not out.exists():
        raise SystemExit(f"no JSON report at {out}: the run failed before writing it (see the output above)")
    shown = [Path(p).relative_to(REPO).as_posix() if Path(p).is_absolute() and Path(p).is_relative_to(REPO)
             else (Path(p).name if Path(p).is_absolute() else p) for p in command[1:]]
    return json.loads(out.read_text()), ["python", *shown]


def case_row(off: dict, on: dict) -> dict:
    row = {"case_id": off["case_id"], "subject": off["subject"], "prompt": off["prompt"],
           "target_new": off["target_new"]}
    for label, case in (("off", off), ("on", on)):
        d = case.get("diagnostics") or {}
        row.update({f"{k}_{label}": case.get(k) for k in FIELDS})
        row[f"denominator_{label}"] = d.get("denominator")
        row[f"denominator_kbar_{label}"] = d.get("denominator_kbar")
        row[f"numerator_norm_{label}"] = d.get("numerator_norm")
    return row


def run(args) -> None:
    tmp = Path(tempfile.mkdtemp())
    off, off_command = run_suite(args.model, args.n, None, tmp / "off.json")
    on, on_command = run_suite(args.model, args.n, HPARAMS_ON, tmp / "on.json")
    by_id = {c["case_id"]: c for c in on["cases"]}
    rows = [case_row(c, by_id[c["case_id"]]) for c in off["cases"] if c["case_id"] in by_id]
    doc = {
        "model": args.model, "cpu": cpu_name(), "cases": len(rows),
        "hparams_on": HPARAMS_ON.read_text(), "mom2_on": on["run"]["hparams"],
        "commands": {"off": " ".join(off_command), "on": " ".join(on_command)},
        "summary": {label: {"passed": sum(bool(r[f"passed_{label}"]) for r in rows),
                            "efficacy": sum(bool(r[f"efficacy_{label}"]) for r in rows)} for label in ("off", "on")},
        "rows": rows,
        "reports": {"off": off, "on": on},
    }
    path = results_path(args.model)
    part = path.with_suffix(".tmp")
    part.write_text(json.dumps(doc, indent=1))
    part.replace(path)
    print(path)
    table(args)


def table(args) -> None:
    doc = json.loads(results_path(args.model).read_text())

    def verdict(r, label):
        return "pass" if r[f"passed_{label}"] else "fail (" + ", ".join(r[f"failed_gates_{label}"]) + ")"

    print("| case | ME-PPL off | ME-PPL on | verdict off | verdict on | denominator off | denominator on | "
          "efficacy off / on |")
    print("|---|---|---|---|---|---|---|---|")
    for r in doc["rows"]:
        print(f"| {r['case_id']} | {r['ppl_off']:.4g} | {r['ppl_on']:.4g} | {verdict(r, 'off')} | {verdict(r, 'on')} | "
              f"{r['denominator_off']:.3g} | {r['denominator_on']:.3g} | "
              f"{'yes' if r['efficacy_off'] else 'no'} / {'yes' if r['efficacy_on'] else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run ROME off and on over the first N HardCF cases and write the results")
    p.add_argument("--n", type=int, default=10)
    q = sub.add_parser("table", help="the Markdown table of the results")
    for parser_ in (p, q):
        parser_.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
