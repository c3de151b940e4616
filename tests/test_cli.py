"""The `editguard` command on a tiny model and on a hand-made JSON report."""

import json

from editguard.cli import main
from editguard.report import write_report

RUN = {"model": "tiny-llama", "editor": "rome", "suite": "hardcf", "ppl_corpus": "me-ppl-50",
       "baseline_ppl": 100.0, "baseline_corpus_ppl": 90.0,
       "thresholds": {"ppl_max": 1000.0, "ppl_max_ratio": 2.0, "denominator_ratio_min": 0.1,
                      "update_norm_rel_max": 0.5}}


def _case(case_id, ppl, passed, gates=()):
    return {"case_id": case_id, "subject": "Paris", "prompt": "{} is the capital of", "target_new": "Rome",
            "passed": passed, "failed_gates": list(gates), "ppl": ppl, "ppl_baseline": 100.0,
            "denominator_ratio": 0.02, "key_cosine": 0.1, "update_norm_rel": 1.2, "efficacy": True}


def test_ppl_prints_both_perplexities(capsys, data_dir):
    assert main(["ppl", "--model", "tiny-gpt2", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt2 me-ppl-50 (50 sentences" in out and "corpus ppl" in out


def test_report_renders_failed_cases_worst_first_and_exits_1(tmp_path, capsys):
    path = write_report(tmp_path / "r.json", RUN, [_case("1", 120.0, True), _case("2", 5000.0, False, ["perplexity"]),
                                                   _case("3", 900.0, False, ["perplexity"])])
    assert main(["report", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 passed" in out and "2 failed" in out and "1 collapsed" in out and "1 failed a gate" in out
    assert out.index("5000.0") < out.index("900.0")


def test_report_of_passing_run_exits_0(tmp_path):
    path = write_report(tmp_path / "r.json", RUN, [_case("1", 120.0, True)])
    assert main(["report", str(path)]) == 0


def test_report_rejects_a_file_that_is_not_a_report(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": []}))
    assert main(["report", str(bad)]) == 2
    assert "not an editguard JSON report" in capsys.readouterr().err


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_writes_scatter_sequence_and_risk_plots(tmp_path, capsys):
    singles = [_case(str(i), 10 ** (1 + i % 4), i % 4 < 2) for i in range(8)]
    report = write_report(tmp_path / "single.json", RUN, singles)
    steps = [{**_case(f"s{i}", 100.0 * 3 ** i, True), "sequence": "hard", "step": i} for i in range(1, 5)]
    seq_report = write_report(tmp_path / "seq.json", {**RUN, "editor": "c-rome"}, steps)
    mined = tmp_path / "mined.json"
    measurements = [{**_case(str(i), 10.0 ** i, True), "group": "top-risk" if i > 2 else "control",
                     "screen": {"denominator_ratio": 10.0 ** -i, "risk": float(i), "key_cosine": 0.5}}
                    for i in range(1, 6)]
    mined.write_text(json.dumps({"cases": [], "run": RUN, "measurements": measurements}))
    out = tmp_path / "plots"
    assert main(["plot", str(report), str(seq_report), str(mined), "--plots", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    # The cases carry ROME's anatomy, so each report also gets its anatomy plot.
    assert names == ["anatomy-c-rome-tiny-llama-hardcf-sequential.png", "anatomy-rome-tiny-llama-hardcf.png",
                     "anatomy-rome-tiny-llama-mined-mined.png",
                     "ppl-rome-tiny-llama-hardcf.png", "ppl-rome-tiny-llama-mined-mined.png",
                     "risk-vs-ppl-mined.png", "sequence-ppl.png"]
    assert all(_is_png(out / n) for n in names)
    assert capsys.readouterr().out.count("wrote ") == 7


def test_plot_rejects_other_json(tmp_path, capsys):
    other = tmp_path / "x.json"
    other.write_text("[1, 2]")
    assert main(["plot", str(other), "--plots", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an editguard JSON report (expected keys 'run' and 'cases'), nor a mined suite file" in err


def test_report_tells_gate_failures_from_collapse_and_nan_counts_as_collapsed(tmp_path, capsys):
    run = {**RUN, "suites": {"suites/hardcf/test_hardcf.py": {"suite_source": "100 CounterFact cases",
                                                               "cases_total": 100, "cases_selected": 3}}}
    cases = [{**_case("1", 120.0, True), "suite_module": "suites/hardcf/test_hardcf.py"},
             {**_case("2", 150.0, False, ["update_norm"]), "suite_module": "suites/hardcf/test_hardcf.py"},
             {**_case("3", float("nan"), False, ["perplexity"]), "suite_module": "suites/hardcf/test_hardcf.py"}]
    path = write_report(tmp_path / "r.json", run, cases)
    doc = json.loads(path.read_text())
    assert [c["verdict"] for c in doc["cases"]] == ["passed", "failed gate", "collapsed"]
    assert doc["summary"] == {"cases": 3, "passed": 1, "failed_gate": 1, "collapsed": 1,
                              "error": 0, "failed_gate_by_gate": {"update_norm": 1}}
    assert main(["report", str(path)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "1 passed, 2 failed: 1 failed a gate without collapsing (update_norm: 1), 1 collapsed" in out
    assert "cases: 3 of 100 ran (the first 3 selected by --max-cases); source: 100 CounterFact cases" in out
    assert out.count("legend:") == 1
    assert "calibrated on smollm2-135m" in out and "--update-norm-max" in out   # tiny-llama: not calibrated


def test_next_steps():
    from editguard.report.verdicts import next_step

    run = {"editor": "rome", "model": "smollm2-135m"}
    first = {**_case("1", 5000.0, False, ["perplexity", "denominator_ratio"])}
    assert "the subject starts the prompt; C-ROME" in next_step(first, run)
    later = {**first, "prompt": "The capital of {} is"}
    assert "C-ROME" in next_step(later, run) and "starts the prompt" not in next_step(later, run)
    norm = _case("2", 150.0, False, ["update_norm"])
    assert "calibrated on smollm2-135m" in next_step(norm, {"editor": "ft", "model": "gpt2-xl"})
    assert "calibrated on" not in next_step(norm, run)
    assert next_step(_case("3", 5000.0, False, ["perplexity"]), {"editor": "ft", "model": "gpt2-xl"}) == ""


def test_plots_mark_verdicts_label_ids_in_numeric_order_and_keep_sequences_apart(tmp_path, monkeypatch):
    from editguard.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    cases = [_case("10", 120.0, True), _case("9", 150.0, False, ["update_norm"]), _case("100", 5000.0, False)]
    plots.plot_ppl_scatter(RUN, cases, tmp_path / "p.png")
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["9", "10", "100"]
    assert "numeric order" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"passed: 1", "failed a gate (not collapsed) [update_norm]: 1", "collapsed: 1"} <= set(labels)
    steps = [{**_case(f"s{i}", 100.0, True), "step": i} for i in range(1, 4)]
    plots.plot_sequences([("rome · normal", steps), ("c-rome · hard", steps)], tmp_path / "s.png")
    lines = [line for line in figures[-1].axes[0].get_lines() if line.get_label().endswith(("normal", "hard"))]
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 2


def test_sequence_plot_draws_probed_steps_only_and_downstream_beside_perplexity(tmp_path, monkeypatch):
    from editguard.report import plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    scores = {"piqa": {"accuracy": 0.6, "unedited": 0.65}}
    steps = [{**_case(f"s{i}", 100.0 * i if i % 2 == 0 else None, True), "step": i, "ppl_probed": i % 2 == 0,
              **({"downstream": scores} if i % 2 == 0 else {})} for i in range(1, 7)]
    path = plots.plot_sequences([("memit · hard", steps)], tmp_path / "s.png")
    assert path.stat().st_size > 5000
    ppl_axis, downstream_axis = figures[-1].axes
    line = next(line for line in ppl_axis.get_lines() if line.get_label() == "memit · hard")
    assert list(line.get_xdata()) == [0, 2, 4, 6]   # the unedited start and the probed steps
    assert "collapse line (1000)" in [t.get_text() for t in ppl_axis.get_legend().get_texts()]
    accuracy = next(line for line in downstream_axis.get_lines() if line.get_label() == "memit · hard · piqa")
    assert list(accuracy.get_xdata()) == [0, 2, 4, 6] and list(accuracy.get_ydata()) == [0.65, 0.6, 0.6, 0.6]


def test_sequence_plot_zooms_on_the_series_a_collapse_would_flatten(tmp_path, monkeypatch):
    from editguard.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    calm = [{**_case(f"s{i}", 160.0 + i, True), "step": i} for i in range(1, 4)]
    collapsed = [{**_case(f"c{i}", 1e10, False), "step": i} for i in range(1, 4)]
    plots.plot_sequences([("rome · hard", collapsed), ("memit · hard", calm)], tmp_path / "s.png")
    log_axis, zoom_axis = figures[-1].axes[:2]
    assert log_axis.get_yscale() == "log" and zoom_axis.get_yscale() == "linear"
    assert [line.get_label() for line in zoom_axis.get_lines()] == ["memit · hard"]
    plots.plot_sequences([("memit · hard", calm)], tmp_path / "s.png")
    assert len(figures[-1].axes) == 1   # nothing to zoom on


def test_an_unwritable_output_path_is_refused_before_the_work(tmp_path, capsys):
    from editguard.cli import main

    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    assert main(["merge", str(tmp_path / "a.json"), "--json", str(blocker / "merged.json")]) == 2
    assert f"--json {blocker / 'merged.json'}: {blocker} is not a directory" in capsys.readouterr().err
