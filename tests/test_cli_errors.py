"""Every `editguard` subcommand ends a bad model, a bad data directory or an unwritable output
with one line on stderr (`editguard COMMAND: what and where`) and exit code 2: no traceback.
Outputs are checked before the model loads. Run in-process through main()."""

from __future__ import annotations

import pytest

from editguard.cache import unwritable_reason
from editguard.cases import write_cases
from editguard.cli import main
from tests.tiny_edits import SCREEN_CASES

BAD_MODEL = "./no-such-model"
UNWRITABLE = "/proc/no-such-dir/out.json"   # cannot be created, even by root

# The commands that load a model, with the arguments that get them to their data check.
MODEL_COMMANDS = {
    "ppl": [], "stats": ["--tokens", "64"], "screen": ["--show", "0"], "mine": ["--top", "1", "--control", "0"],
    "calibrate": ["--cases", "1"], "filter": ["{case_file}"], "analyze": ["positions"],
    "train-mend": ["--steps", "1"], "eval": ["--tasks", "piqa", "--n", "2"],
}
# Each command's output option (a file it writes), where it has one.
OUTPUT_OPTIONS = {"screen": ["--json"], "mine": ["--json", "--progress"], "calibrate": ["--json"],
                  "analyze": ["--json"], "eval": ["--json", "--lm-eval-json"]}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory (default outputs go to out/ there) and a private cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDITGUARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDITGUARD_SUITES", str(tmp_path / "suites"))
    write_cases(tmp_path / "cases.json", SCREEN_CASES[:2])
    return tmp_path


def _argv(command: str, workdir, *extra: str) -> list[str]:
    head = [command] + [a.format(case_file=workdir / "cases.json") for a in MODEL_COMMANDS[command]]
    return head + list(extra)


def _one_line_error(capsys, command: str, rc: int) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"editguard {command}: "), err
    return lines[0]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_a_model_that_is_not_there(command, workdir, data_dir, capsys):
    line = _one_line_error(capsys, command, main(_argv(command, workdir, "--model", BAD_MODEL,
                                                       "--data", str(data_dir))))
    assert f"--model={BAD_MODEL}: no such directory" in line and "expected a model directory" in line


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_data_directory_that_is_missing_or_lacks_the_file(command, kind, workdir, capsys):
    data = workdir / "no-such-data" if kind == "missing" else workdir / "empty-data"
    if kind == "empty":
        data.mkdir()
    line = _one_line_error(capsys, command, main(_argv(command, workdir, "--model", "tiny-llama",
                                                       "--data", str(data))))
    assert str(data) in line
    assert ("does not exist" if kind == "missing" else "not found") in line


@pytest.mark.parametrize("command, option", [(c, o) for c, options in OUTPUT_OPTIONS.items() for o in options]
                         + [("filter", None)])
def test_an_unwritable_output_is_refused_before_the_model_loads(command, option, workdir, data_dir, capsys):
    # The model does not exist either: the output is what the message names, so it was checked first.
    argv = _argv(command, workdir, "--model", BAD_MODEL, "--data", str(data_dir))
    if option is None:   # filter writes its outcome into the case file
        argv[1] = UNWRITABLE
    else:
        argv += [option, UNWRITABLE]
    line = _one_line_error(capsys, command, main(argv))
    assert UNWRITABLE in line and "cannot create" in line and BAD_MODEL not in line


@pytest.mark.parametrize("argv", [
    ["merge", "a.json", "--json", UNWRITABLE], ["compare", "a.json", "b.json", "--markdown", UNWRITABLE],
    ["plot", "a.json", "--plots", "/proc/no-such-dir/plots"], ["report", "a.json", "--plots", "/proc/no-such-dir/p"],
    ["report", "a.json", "--html", UNWRITABLE],
])
def test_report_commands_refuse_an_unwritable_output_before_reading(argv, workdir, capsys):
    line = _one_line_error(capsys, argv[0], main(argv))
    assert "/proc/no-such-dir" in line and "a.json" not in line.split(":")[1]


def test_a_missing_report_is_one_line(workdir, capsys):
    line = _one_line_error(capsys, "report", main(["report", str(workdir / "nothing.json")]))
    assert "nothing.json" in line


def test_the_write_check_tries_for_real_and_leaves_nothing_behind(tmp_path):
    assert unwritable_reason(tmp_path / "a" / "b" / "r.json") == ""
    assert unwritable_reason(tmp_path / "c" / "plots", directory=True) == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert "cannot create" in unwritable_reason(UNWRITABLE)
    existing = tmp_path / "r.json"
    existing.write_text("kept")
    assert unwritable_reason(existing) == "" and existing.read_text() == "kept"


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "0  success" in out and "1  a gate failed" in out and "2  nothing was judged" in out


def test_a_bad_option_is_argparse_usage_exit_2(capsys):
    with pytest.raises(SystemExit) as done:
        main(["ppl", "--no-such-option"])
    assert done.value.code == 2 and "Traceback" not in capsys.readouterr().err
