"""The HTML report (--editguard-html, `editguard report --html`): one self-contained page from a real
tiny-llama run, checked as text and, under the marker `browser`, in headless Chromium (Debian's
`chromium` and `chromium-driver`, through selenium): the table sorts, filters by verdict, and
every plot image loads.

The run edits five cases with an editor that does something different per case, so that the page
holds every kind of row: no change (passed), a small change (passed), two large ones (a failed gate
or a collapse) and one that raises (error).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SUITE = '''
from editguard.cases import EditCase

CASES = [
    EditCase("c1", "{} is the capital of", "Paris", "Rome", "France"),
    EditCase("c2", "The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    EditCase("c3", "{} is produced by", "Windows", "Apple", "Microsoft"),
    EditCase("c4", "{} plays the sport of", "Lionel Messi", "tennis", "football"),
    EditCase("c5", "The official language of {} is", "Brazil", "Dutch", "Portuguese"),
]

def edit_cases(settings):
    return CASES

def test_edit(edit_case, edit_guard):
    edit_guard.assert_safe(edit_case)
'''

EDITOR = '''
import torch
from editguard.editors.api import EditReport

SCALE = {"Paris": 0.0, "Danielle Darrieux": 1e-4, "Lionel Messi": 0.5, "Brazil": 3.0}


class PerCase:
    """Adds a constant to the edited matrix, its size chosen by the case; raises on Windows."""
    name = "per-case"

    def touched_parameters(self, model, cases):
        return [model.family.rewrite_weight(model.edit_layer)]

    def apply(self, model, cases):
        subject = cases[0].subject
        if subject == "Windows":
            raise RuntimeError("planted failure for this case")
        with torch.no_grad():
            model.rewrite_matrix(model.edit_layer).add_(SCALE[subject])
        return EditReport(touched=self.touched_parameters(model, cases))
'''


@pytest.fixture(scope="module")
def html_run(tmp_path_factory, data_dir):
    """A plugin run on tiny-llama writing the JSON and the HTML report (a subprocess: torch cannot be
    imported twice in one process)."""
    where = tmp_path_factory.mktemp("html_run")
    (where / "test_suite.py").write_text(SUITE)
    (where / "per_case_editor.py").write_text(EDITOR)
    env = {**os.environ, "EDITGUARD_DATA": str(data_dir),
           "PYTHONPATH": os.pathsep.join([str(where), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "test_suite.py", "--model=tiny-llama",
                          "--editor=per_case_editor:PerCase", "--editguard-json=r.json", "--editguard-html=r.html",
                          "-p", "no:cacheprovider", "-q"], cwd=where, env=env, capture_output=True, text=True)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]   # failing cases: exit 1
    return where, json.loads((where / "r.json").read_text())


def test_the_page_holds_every_case_reason_and_plot_and_reaches_for_nothing_outside(html_run):
    where, report = html_run
    page = (where / "r.html").read_text(encoding="utf-8")
    verdicts = {c["case_id"]: c["verdict"] for c in report["cases"]}
    assert verdicts["c1"] == "passed" and verdicts["c3"] == "error"
    assert verdicts["c5"] in ("failed gate", "collapsed")
    for case in report["cases"]:
        assert f'data-case="{case["case_id"]}"' in page and f'data-verdict="{case["verdict"]}"' in page
        if case["verdict"] != "passed":
            assert f'id="case-{case["case_id"]}"' in page   # its reasons and next step
    assert "planted failure for this case" in page
    assert page.count("data:image/png;base64,") >= 1
    # Self-contained: no stylesheet, script or image from anywhere else.
    for outside in ('src="http', "src='http", 'href="http', "<link ", "@import", "url(http"):
        assert outside not in page, outside


def test_editguard_report_writes_the_same_page_from_the_json(html_run, tmp_path):
    where, report = html_run
    out = tmp_path / "again.html"
    run = subprocess.run([sys.executable, "-m", "editguard.cli", "report", str(where / "r.json"), "--html", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr          # the report holds failed cases
    page = out.read_text(encoding="utf-8")
    assert all(f'data-case="{c["case_id"]}"' in page for c in report["cases"])


def test_an_unwritable_html_path_is_refused_before_any_edit(tmp_path, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = subprocess.run([sys.executable, "-m", "editguard.cli", "report", str(ROOT / "bench/results/scale/"
                          "hardcf4-rome-serial.json"), "--html", str(blocker / "r.html")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "--html" in run.stderr, run.stderr


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1800")


def chromium(user_data_dir: Path):
    """Headless Chromium through selenium, with Debian's chromium and chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("the browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver "
                    "(or deselect it with -m 'not browser')")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.browser
def test_in_chromium_the_table_sorts_filters_by_verdict_and_every_image_loads(html_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    where, report = html_run
    browser = chromium(tmp_path / "profile")
    try:
        browser.get((where / "r.html").as_uri())
        rows = browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")
        assert len(rows) == len(report["cases"])

        def visible():
            return [r.get_attribute("data-case") for r in rows if r.is_displayed()]

        def verdict_of(case_id):
            return next(c["verdict"] for c in report["cases"] if c["case_id"] == case_id)

        # Shown first: the failed cases only.
        assert sorted(visible()) == sorted(c["case_id"] for c in report["cases"] if c["verdict"] != "passed")
        select = Select(browser.find_element(By.ID, "verdict-filter"))
        select.select_by_value("all")
        assert len(visible()) == len(rows)
        for wanted in {c["verdict"] for c in report["cases"]}:
            select.select_by_value(wanted)
            shown = visible()
            assert shown and all(verdict_of(case) == wanted for case in shown), (wanted, shown)
        assert browser.find_element(By.ID, "shown").text.endswith(f"of {len(rows)} cases shown")

        # Sorting by the update norm: ascending, then descending on a second click; empty cells last.
        select.select_by_value("all")
        header = next(th for th in browser.find_elements(By.CSS_SELECTOR, "#cases thead th")
                      if th.text.startswith("‖ΔW‖/‖W‖"))
        column = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#cases thead th")].index(header.text)
        norms = {c["case_id"]: c.get("update_norm_rel") for c in report["cases"]}
        for order in ("ascending", "descending"):
            header.click()
            assert header.get_attribute("aria-sort") == order
            ids = [r.get_attribute("data-case") for r in browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")]
            measured = [norms[i] for i in ids if norms[i] is not None]
            assert measured == sorted(measured, reverse=order == "descending"), (order, ids)
            cells = [r.find_elements(By.TAG_NAME, "td")[column].text
                     for r in browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")]
            assert len(set(cells)) > 1

        # Every image decoded.
        images = browser.find_elements(By.TAG_NAME, "img")
        assert images
        for image in images:
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", image), \
                image.get_attribute("alt")
    finally:
        browser.quit()
