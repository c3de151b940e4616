"""Where suite files are read and written: a model's mined list is looked up in the user's
project (./editguard-suites, or $EDITGUARD_SUITES) before the copy shipped in the package
editguard_suites; `editguard mine` writes to the project by default; nothing writes inside an
installed package. The shipped package is faked as a folder on sys.path (no real model)."""

import json
import sys

import pytest

import editguard.mining as mining
import editguard.suite_files as suite_files
from editguard.cases import read_cases, write_cases
from editguard.cli import main
from editguard.mining import hardest_records, record_filter, write_mined_suite
from editguard.suite_files import (
    find_mined_suite,
    find_suite_file,
    project_mined_suite_path,
    shipped_suites_dir,
    suite_file_label,
)
from editguard.suites import hardcf
from tests.tiny_edits import SCREEN_CASES


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory as the current directory, EDITGUARD_SUITES unset."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("EDITGUARD_SUITES", raising=False)
    return root


@pytest.fixture
def site_packages(tmp_path, monkeypatch):
    """A fake site-packages holding a fake installed editguard_suites, with a mined list for
    tiny-llama and a HardEdit case file; taken for an installed-package folder."""
    site = tmp_path / "site-packages"
    package = site / "editguard_suites"
    (package / "hardcf").mkdir(parents=True)
    (package / "hardedit").mkdir()
    for folder in (package, package / "hardcf", package / "hardedit"):
        (folder / "__init__.py").write_text("")
    write_cases(package / "hardcf" / "tiny-llama.json", SCREEN_CASES[:3])
    write_cases(package / "hardedit" / "cases.json", SCREEN_CASES[:3])
    monkeypatch.delitem(sys.modules, "editguard_suites", raising=False)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(suite_files, "_installed_package_dirs", lambda: [site.resolve()])
    return site


def test_mine_writes_to_the_current_project_by_default(project, monkeypatch):
    path = project_mined_suite_path("smollm2-135m")
    assert path.resolve() == project / "editguard-suites" / "hardcf" / "smollm2-135m.json"
    assert not path.resolve().is_relative_to(shipped_suites_dir().resolve())  # never the package
    written = write_mined_suite(path, [], {}, {"model": "smollm2-135m", "editor": "rome",
                                               "thresholds": {"ppl_max": 1000}})
    assert written.resolve().is_file() and read_cases(written) == []
    monkeypatch.setenv("EDITGUARD_SUITES", str(project / "lists"))
    assert project_mined_suite_path("my/model") == project / "lists" / "hardcf" / "my_model.json"


def test_the_shipped_mined_list_is_found_from_any_directory(project):
    path = find_mined_suite("smollm2-135m")
    assert path is not None and path.is_relative_to(shipped_suites_dir())
    assert suite_file_label(path) == "hardcf/smollm2-135m.json"
    assert find_mined_suite("no-such-model") is None


def test_the_project_mined_list_comes_before_the_shipped_one(project, site_packages, monkeypatch):
    shipped = site_packages / "editguard_suites" / "hardcf" / "tiny-llama.json"
    assert find_mined_suite("tiny-llama") == shipped
    listed = hardcf("tiny-llama", load=None)
    assert [c.case_id for c in listed] == ["1", "2", "3"]
    assert listed.description.startswith("mined HardCF list hardcf/tiny-llama.json: 3 cases")

    write_cases(project_mined_suite_path("tiny-llama"), SCREEN_CASES[:1])
    assert find_mined_suite("tiny-llama").resolve() == project / "editguard-suites" / "hardcf" / "tiny-llama.json"
    listed = hardcf("tiny-llama", load=None)
    assert [c.case_id for c in listed] == ["1"]
    assert listed.description.startswith("mined HardCF list editguard-suites/hardcf/tiny-llama.json: 1 cases")

    # EDITGUARD_SUITES names another project folder; without a list there, the shipped one again.
    monkeypatch.setenv("EDITGUARD_SUITES", str(project / "elsewhere"))
    assert find_mined_suite("tiny-llama") == shipped
    assert find_suite_file("hardedit", "cases.json") == site_packages / "editguard_suites" / "hardedit" / "cases.json"


def test_filter_refuses_the_installed_case_file_and_names_the_project_copy(project, site_packages, capsys):
    shipped = site_packages / "editguard_suites" / "hardedit" / "cases.json"
    before = shipped.read_text()
    copy = "editguard-suites/hardedit/cases.json"
    with pytest.raises(ValueError, match="inside an installed package") as err:
        record_filter(shipped, [], {"model": "tiny-llama", "editor": "rome", "thresholds": {"ppl_max": 1000},
                                    "ppl_corpus": "me-ppl-50"})
    assert f"cp {shipped} {copy}" in str(err.value)
    # The command refuses before loading the model (an unknown model would fail later otherwise).
    assert main(["filter", str(shipped), "--model", "no-such-model"]) == 2
    message = capsys.readouterr().err
    assert "editguard filter:" in message and "inside an installed package" in message and copy in message
    assert shipped.read_text() == before
    # The project's copy is what the hardedit suite reads first, and the filter may write it.
    (project / "editguard-suites" / "hardedit").mkdir(parents=True)
    (project / copy).write_text(before)
    assert find_suite_file("hardedit", "cases.json").resolve() == project / copy
    record_filter(copy, [], {"model": "tiny-llama", "editor": "rome", "thresholds": {"ppl_max": 1000},
                             "ppl_corpus": "me-ppl-50"})
    assert json.loads((project / copy).read_text())["filters"]["tiny-llama/rome"]["pending"] == ["1", "2", "3"]


def test_mine_refuses_an_output_inside_an_installed_package(project, site_packages):
    target = site_packages / "editguard_suites" / "hardcf" / "tiny-gpt2.json"
    with pytest.raises(ValueError, match="inside an installed package"):
        write_mined_suite(target, [], {}, {"model": "tiny-gpt2", "editor": "rome", "thresholds": {"ppl_max": 1000}})
    assert not target.exists()


def test_a_model_without_collapse_keeps_its_most_degraded_cases_and_says_so():
    """The subject-first collapse need not reproduce on every model: the mined list then holds
    what degrades it, else the worst intact edits, and its description says which."""
    run = {"model": "m", "editor": "rome", "thresholds": {"ppl_max": 1000, "ppl_max_ratio": 2.0}}

    def record(case_id, level, ppl):
        return {"case_id": case_id, "degradation": level, "ppl": ppl}

    mixed = [record("1", "intact", 20), record("2", "collapsed", 5e4), record("3", "degraded", 50)]
    kept, what = hardest_records(mixed, run)
    assert [r["case_id"] for r in kept] == ["2"] and "above 1000" in what
    no_collapse = [record("1", "intact", 20), record("3", "degraded", 50), record("4", "degraded", 45)]
    kept, what = hardest_records(no_collapse, run)
    assert [r["case_id"] for r in kept] == ["3", "4"] and what.startswith("no mined rome edit pushes")
    intact = [record(str(i), "intact", 10 + (i * 7) % 13) for i in range(mining.WORST_INTACT_KEPT + 5)]
    kept, what = hardest_records(intact, run)
    assert len(kept) == mining.WORST_INTACT_KEPT and "collapses or degrades" in what
    assert min(r["ppl"] for r in kept) >= max(r["ppl"] for r in intact if r not in kept)
    assert [r["case_id"] for r in kept] == sorted((r["case_id"] for r in kept), key=int)  # mining order
