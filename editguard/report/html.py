"""The HTML report of a run (--editguard-html, `editguard report --html`): one self-contained page,
styles, script and plots inline (the plots as base64 PNGs), so it opens from a CI artifact with no
network. It derives from the typed records as the terminal and Markdown reports do: the header and
the counts by verdict, every case in a table that sorts by any column and filters by verdict (the
failed ones shown first), each failing case's reasons and next step, the plots, and the comparison
with a saved report where there is one."""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from editguard.report.compare import Change, Comparison
from editguard.report.verdicts import COLLAPSED, ERROR, FAILED_GATE, LEGEND, PASSED, next_step, summarise, verdict
from editguard.run.records import ANATOMY_COLUMNS

VERDICT_CLASS = {PASSED: "passed", FAILED_GATE: "failed-gate", COLLAPSED: "collapsed", ERROR: "error"}
FAILED = (FAILED_GATE, COLLAPSED, ERROR)

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.status{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:13px}
.status.ok{background:#2e7d32}.status.bad{background:#c62828}
.meta{color:#555;margin:4px 0}.meta code{background:#eee;padding:0 4px;border-radius:3px}
.counts{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.count{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px 16px;min-width:110px}
.count b{display:block;font-size:24px}
.count.passed b{color:#2e7d32}.count.failed-gate b{color:#b26a00}.count.collapsed b{color:#c62828}
.count.error b{color:#8e0000}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.verdict{font-weight:600}.verdict.passed{color:#2e7d32}.verdict.failed-gate{color:#b26a00}
.verdict.collapsed{color:#c62828}.verdict.error{color:#8e0000}
.toolbar{margin:8px 0;display:flex;gap:12px;align-items:center}
.case{background:#fff;border:1px solid #ddd;border-left:4px solid #c62828;border-radius:6px;padding:8px 12px;
  margin:8px 0}
.case.failed-gate{border-left-color:#b26a00}.case h3{font-size:14px;margin:0 0 4px}
.next{color:#0d47a1}.plots img{max-width:100%;border:1px solid #ddd;background:#fff;margin:8px 0}
.legend{color:#666;font-size:12px}
.notice{background:#fff3e0;border:1px solid #ffb74d;padding:8px 12px;border-radius:6px}
"""

SCRIPT = """
(function(){
  var table=document.getElementById('cases');if(!table)return;
  var body=table.tBodies[0],heads=table.tHead.rows[0].cells,filter=document.getElementById('verdict-filter'),
      shown=document.getElementById('shown');
  function key(cell,numeric){var v=cell.getAttribute('data-sort');
    if(numeric){var x=parseFloat(v);return isNaN(x)?Infinity:x;}return (v||cell.textContent).toLowerCase();}
  Array.prototype.forEach.call(heads,function(th,i){th.addEventListener('click',function(){
    var asc=th.getAttribute('aria-sort')!=='ascending',numeric=th.getAttribute('data-type')==='number';
    Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',asc?'ascending':'descending');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a.cells[i],numeric),y=key(b.cells[i],numeric);
      return (x<y?-1:x>y?1:0)*(asc?1:-1);});
    rows.forEach(function(r){body.appendChild(r);});});});
  function apply(){var want=filter.value,n=0;
    Array.prototype.forEach.call(body.rows,function(r){var v=r.getAttribute('data-verdict'),
      show=want==='all'||(want==='failed'?v!=='passed':v===want);r.hidden=!show;if(show)n++;});
    shown.textContent=n+' of '+body.rows.length+' cases shown';}
  filter.addEventListener('change',apply);apply();
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, fmt)


def _sort_value(value: Any) -> str:
    """A cell's numeric sort key ("" sorts last): NaN and +inf as the largest, -inf the smallest."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(int(value))
    if isinstance(value, (int, float)):
        return "1e308" if math.isnan(value) else repr(float(value)).replace("inf", "1e308")
    return ""


def _ratio(ppl: Any, baseline: Any) -> float | None:
    return ppl / baseline if isinstance(ppl, (int, float)) and baseline else None


def plot_images(run: dict[str, Any], cases: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """The run's plots (editguard.report.plots) as (file name, PNG bytes); [] without matplotlib."""
    try:
        from editguard.report.plots import write_report_plots
    except ImportError:
        return []
    with tempfile.TemporaryDirectory(prefix="editguard-html-") as tmp:
        try:
            written = write_report_plots([{"run": run, "cases": cases}], tmp)
        except ImportError:   # matplotlib is an optional dependency (the `plots` extra)
            return []
        return [(Path(p).name, Path(p).read_bytes()) for p in written]


def _header(run: dict[str, Any], cases: list[dict[str, Any]], failed: bool) -> list[str]:
    suites = ", ".join(sorted({f.get("suite") or m for m, f in (run.get("suites") or {}).items()})) \
        or run.get("suite") or "cases"
    out = [f"<h1>editguard: {_e(run.get('editor'))} on {_e(run.get('model'))} ({_e(suites)}) "
           f"<span class=\"status {'bad' if failed else 'ok'}\">{'failed' if failed else 'passed'}</span></h1>"]
    if run.get("baseline_ppl") is not None:
        out.append(f"<p class=\"meta\">Baseline {_e(run.get('ppl_corpus'))} perplexity {run['baseline_ppl']:.2f}"
                   + (f" (token-weighted {run['baseline_corpus_ppl']:.2f})" if run.get("baseline_corpus_ppl") else "")
                   + f"; BOS: {_e(run.get('ppl_bos', 'never'))}.</p>")
    gates = ", ".join(f"<code>{_e(k)}={v:.4g}</code>" for k, v in (run.get("thresholds") or {}).items())
    out.append(f"<p class=\"meta\">Gates: {gates}" + (f" ({_e(run['calibration'])})" if run.get("calibration") else "")
               + ".</p>")
    for module, fields in (run.get("suites") or {}).items():
        if fields.get("suite_source"):
            out.append(f"<p class=\"meta\">{_e(module)}: {_e(fields['suite_source'])}</p>")
    inv = run.get("invocation") or {}
    if inv.get("argv"):
        git = inv.get("git") or {}
        out.append(f"<p class=\"meta\">Run: <code>{_e(' '.join(map(str, inv['argv'])))}</code>"
                   + (f" at {_e(inv.get('started_utc'))}" if inv.get("started_utc") else "")
                   + (f", commit <code>{_e(str(git.get('commit'))[:12])}</code>{' (dirty)' if git.get('dirty') else ''}"
                      if git.get("commit") else "") + "</p>")
    return out


def _counts(run: dict[str, Any], cases: list[dict[str, Any]]) -> list[str]:
    s = summarise(run, cases)
    cards = [("cases", "", s["cases"]), ("passed", "passed", s["passed"]),
             ("failed a gate", "failed-gate", s["failed_gate"]), ("collapsed", "collapsed", s["collapsed"]),
             ("error", "error", s["error"])]
    out = ["<div class=\"counts\" id=\"counts\">"]
    out += [f"<div class=\"count {cls}\" data-count=\"{cls or 'cases'}\"><b>{n}</b>{_e(label)}</div>"
            for label, cls, n in cards]
    out.append("</div>")
    if s["failed_gate_by_gate"]:
        out.append("<p class=\"meta\">Failed gates (cases not collapsed): "
                   + ", ".join(f"{_e(g)}: {n}" for g, n in s["failed_gate_by_gate"].items()) + ".</p>")
    return out


def _table(run: dict[str, Any], cases: list[dict[str, Any]]) -> list[str]:
    ppl_max = run["thresholds"]["ppl_max"]
    present = [v for v in (FAILED_GATE, COLLAPSED, ERROR, PASSED) if any(verdict(c, ppl_max) == v for c in cases)]
    options = [("failed", "failed (every verdict but passed)"), ("all", "all")] + [(v, v) for v in present]
    out = ["<h2>Cases</h2>", "<div class=\"toolbar\"><label for=\"verdict-filter\">Verdict</label>"
           "<select id=\"verdict-filter\">"
           + "".join(f"<option value=\"{_e(v)}\">{_e(label)}</option>" for v, label in options)
           + "</select><span id=\"shown\"></span><span class=\"legend\">click a column to sort</span></div>"]
    columns = [("case", "text"), ("prompt", "text"), ("→ new", "text"), ("verdict", "text"), ("ppl", "number"),
               ("×base", "number"), *((m.column, "number") for m in ANATOMY_COLUMNS), ("eff", "number"),
               ("failed gates", "text")]
    out.append("<table id=\"cases\"><thead><tr>"
               + "".join(f"<th data-type=\"{kind}\">{_e(name)}</th>" for name, kind in columns)
               + "</tr></thead><tbody>")
    worst_first = sorted(cases, key=lambda c: (verdict(c, ppl_max) == PASSED, -_ppl_key(c.get("ppl"))))
    for c in worst_first:
        v = verdict(c, ppl_max)
        prompt = str(c.get("prompt", "")).replace("{}", str(c.get("subject", "")))
        ratio = _ratio(c.get("ppl"), c.get("ppl_baseline"))
        error = c.get("error")
        gates = f"error in {error.get('phase')}: {error.get('message')}" if error else ", ".join(c.get("failed_gates")
                                                                                                 or [])
        eff = c.get("efficacy")
        cells = [f"<td><a href=\"#case-{_e(c['case_id'])}\">{_e(c['case_id'])}</a></td>" if v != PASSED
                 else f"<td>{_e(c['case_id'])}</td>",
                 f"<td>{_e(prompt)}</td>", f"<td>{_e(c.get('target_new'))}</td>",
                 f"<td class=\"verdict {VERDICT_CLASS[v]}\">{_e(v)}</td>",
                 f"<td class=\"num\" data-sort=\"{_sort_value(c.get('ppl'))}\">{_num(c.get('ppl'), '.1f')}</td>",
                 f"<td class=\"num\" data-sort=\"{_sort_value(ratio)}\">{_num(ratio, '.2f')}</td>",
                 *(f"<td class=\"num\" data-sort=\"{_sort_value(c.get(m.name))}\">{_num(c.get(m.name), m.fmt)}</td>"
                   for m in ANATOMY_COLUMNS),
                 f"<td class=\"num\" data-sort=\"{_sort_value(eff)}\">{ {True: '✓', False: '✗'}.get(eff, '–') }</td>",
                 f"<td>{_e(gates) or '–'}</td>"]
        out.append(f"<tr data-verdict=\"{_e(v)}\" data-case=\"{_e(c['case_id'])}\">" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out.append("<p class=\"legend\">" + "; ".join(f"<b>{_e(t)}</b>: {_e(m)}" for t, m in LEGEND) + "</p>")
    return out


def _ppl_key(ppl: Any) -> float:
    return math.inf if ppl is None or (isinstance(ppl, float) and math.isnan(ppl)) else float(ppl)


def _failures(run: dict[str, Any], cases: list[dict[str, Any]]) -> list[str]:
    ppl_max = run["thresholds"]["ppl_max"]
    failing = [c for c in cases if verdict(c, ppl_max) in FAILED]
    if not failing:
        return []
    out = ["<h2>Failing cases: reasons and next steps</h2>"]
    for c in sorted(failing, key=lambda c: -_ppl_key(c.get("ppl"))):
        v = verdict(c, ppl_max)
        prompt = str(c.get("prompt", "")).replace("{}", str(c.get("subject", "")))
        error = c.get("error")
        reason = (f"{error.get('type')} in {error.get('phase')}: {error.get('message')}" if error
                  else c.get("reason") or ", ".join(c.get("failed_gates") or []))
        step = next_step(c, run)
        out.append(f"<div class=\"case {VERDICT_CLASS[v]}\" id=\"case-{_e(c['case_id'])}\">"
                   f"<h3>{_e(c['case_id'])}: {_e(prompt)} → {_e(c.get('target_new'))} "
                   f"<span class=\"verdict {VERDICT_CLASS[v]}\">({_e(v)})</span></h3>"
                   f"<div class=\"reason\">{_e(reason)}</div>"
                   + (f"<div class=\"next\">next step: {_e(step)}</div>" if step else "") + "</div>")
    return out


def _comparison(comparison: Comparison | None) -> list[str]:
    if comparison is None:
        return []
    c = comparison
    out = [f"<h2 id=\"comparison\">Compared with {_e(c.baseline)} ({_e(c.baseline_editor)})</h2>",
           f"<p>{c.compared} cases compared (fail margins: {_e(', '.join(map(str, c.margins)) or 'none')}): "
           f"<b>{len(c.regressions)} regressions</b>, <b>{len(c.worsenings)} worsened beyond a margin</b>, "
           f"{len(c.improvements)} improvements.</p>"]
    for title, changes in (("Regressions (passed there, fail now)", c.regressions),
                           ("Worsened beyond a margin", c.worsenings), ("Improvements", c.improvements),
                           ("Worse verdicts of cases already failing there", c.worse_verdicts)):
        if changes:
            out.append(f"<h3>{_e(title)}</h3><ul>" + "".join(f"<li>{_e(ch.case)}: {_e(ch.text)}</li>" for ch in changes)
                       + "</ul>")
    for title, ids in (("Only in the saved run", c.only_in_baseline), ("Only in this run", c.only_in_run)):
        if ids:
            out.append(f"<p>{_e(title)} (not compared): {len(ids)} cases: {_e(', '.join(ids))}</p>")
    out += [f"<p class=\"notice\">Note: {_e(n)}</p>" for n in c.notes]
    return out


def saved_comparison(doc: dict[str, Any]) -> Comparison | None:
    """The comparison a saved JSON report holds (its `comparison` key, written by --editguard-compare),
    for `editguard report --html`; None when it has none."""
    saved = doc.get("comparison")
    if not isinstance(saved, dict):
        return None

    def changes(key: str) -> list[Change]:
        return [Change(c.get("case", ""), c.get("text", ""), c.get("metric", "")) for c in saved.get(key) or []]

    return Comparison(saved.get("baseline", ""), saved.get("baseline_editor", ""), saved.get("editor", ""),
                      saved.get("model", ""), list(saved.get("margins") or []), saved.get("compared", 0),
                      changes("regressions"), changes("worsenings"), changes("improvements"),
                      changes("worse_verdicts"), list(saved.get("only_in_baseline") or []),
                      list(saved.get("only_in_run") or []), list(saved.get("notes") or []))


def render_html(run: dict[str, Any], cases: list[dict[str, Any]], comparison: Comparison | None = None,
                completion: dict[str, Any] | None = None,
                plots: list[tuple[str, bytes]] | None = None) -> str:
    """The page. `plots`: (name, PNG bytes) to inline; None draws the run's plots here (needs matplotlib)."""
    ppl_max = run["thresholds"]["ppl_max"]
    failed = any(verdict(c, ppl_max) in FAILED for c in cases) or bool(comparison and comparison.failed)
    title = f"editguard: {run.get('editor')} on {run.get('model')}"
    body = [*_header(run, cases, failed)]
    if completion and not completion.get("complete", True):
        body.append(f"<p class=\"notice\">Incomplete run: {len(completion.get('cases_not_run') or [])} collected "
                    f"edit tests did not run.</p>")
    body += _counts(run, cases)
    body += _comparison(comparison)
    body += _table(run, cases) if cases else ["<p>No case was edited.</p>"]
    body += _failures(run, cases)
    images = plot_images(run, [c for c in cases]) if plots is None else plots
    if images:
        body.append("<h2>Plots</h2><div class=\"plots\">")
        body += [f"<figure><img alt=\"{_e(name)}\" src=\"data:image/png;base64,"
                 f"{base64.b64encode(data).decode('ascii')}\"><figcaption>{_e(name)}</figcaption></figure>"
                 for name, data in images]
        body.append("</div>")
    data = json.dumps({"editor": run.get("editor"), "model": run.get("model"), "cases": len(cases)})
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>"
            f"<body><main data-run='{_e(data)}'>" + "\n".join(body)
            + f"</main><script>{SCRIPT}</script></body></html>\n")


def write_html(path: str | Path, run: dict[str, Any], cases: list[dict[str, Any]],
               comparison: Comparison | None = None, completion: dict[str, Any] | None = None) -> Path:
    """Write the page atomically (editguard.cache.write_atomic)."""
    from editguard.cache import write_atomic

    path = Path(path)
    write_atomic(path, render_html(run, cases, comparison, completion).encode("utf-8"))
    return path
