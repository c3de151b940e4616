"""The reference pages, generated from the code each time the site is built (docs/scripts/hooks.py
adds them to the build; nothing here is committed as a page):

- options.md     every row of editguard.options.OPTIONS: name, short form, ini key, type, default, help
- cli.md         every `editguard` subcommand from its argparse parser
- registries.md  editors, models, families and downstream tasks from their registries
- json-schema.md the JSON report's schema from editguard.run.records
- exit-codes.md  the exit codes and which error kind gives which (editguard.errors)
- errors.md      every error class of editguard, found by walking its modules

    python docs/scripts/gen_reference.py OUT_DIR   # writes the pages there, to look at them
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GENERATED = "<!-- generated from the code at build time by docs/scripts/gen_reference.py -->"


def cell(value) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def code(value) -> str:
    text = cell(value)
    return f"`{text}`" if text else ""


# ---- options ----

def options_page() -> str:
    from editguard.catalog import registered_names
    from editguard.options import OPTIONS

    names = registered_names()
    lines = ["# Options", "", GENERATED, "",
             "One table, `editguard/options.py`, defines the options of the pytest plugin and of the `editguard` "
             "command.", "",
             "- **In a pytest run** every option is `--editguard-NAME`, so installing editguard never clashes with "
             "another project's options (the plugin loads in every pytest run). Options with a short form (`--editor`, "
             "`--model`, ...) get it too, but only where nobody else registered it: the plugin adds the short forms "
             "after the project's own conftests. In a project whose conftest defines `--model`, that option stays the "
             "project's, editguard's is `--editguard-model`, and the pytest header says so. (Options added by "
             "non-root conftests, which pytest loads later, are not seen: define such options in the root conftest.)",
             "- **Every option has an ini key** `editguard_NAME` (dashes as underscores) for `pytest.ini`, "
             "`pyproject.toml` or `tox.ini`.",
             "- **On the command line**, `editguard` subcommands take the same options as `--NAME` "
             "(`--editguard-data` is `editguard ... --data`); see [the command line](cli.md) for which subcommand "
             "takes which.", "",
             "| option | short form | ini key | type | default | meaning |", "|---|---|---|---|---|---|"]
    for o in OPTIONS:
        kind = "flag" if o.is_flag else o.type.__name__
        if o.choices:
            kind += ": " + ", ".join(o.choices)
        default = o.default_help or ("off" if o.is_flag else ("–" if o.default is None else o.default))
        lines.append("| " + " | ".join([f"`{o.pytest_flag}`", code(o.short_flag or ""), f"`{o.ini_key}`", cell(kind),
                                        cell(default), cell(o.help_text(names))]) + " |")
    return "\n".join(lines) + "\n"


# ---- the command line ----

def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def cli_page() -> str:
    from editguard.cli import EXIT_CODES, build_parser

    parser = build_parser()
    commands = list(_subparsers(parser))
    lines = ["# Command line", "", GENERATED, "",
             f"`{parser.prog}`: {parser.description} `python -m editguard.cli` is the same command.", "",
             "| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{name}) | {cell(text)} |" for name, text, _ in commands]
    lines += ["", "```", EXIT_CODES, "```", "", "See [exit codes](exit-codes.md)."]
    for name, text, sub in commands:
        sub.prog = f"editguard {name}"
        lines += ["", f"## {name}", "", cell(text) + ".", "", "```", sub.format_usage().strip(), "```", "",
                  "| argument | default | meaning |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = ", ".join(action.option_strings) or action.dest
            if action.metavar and action.option_strings:
                flag += f" {action.metavar}"
            default = action.default
            if isinstance(action, argparse._StoreTrueAction):
                default = "off"
            elif default is None or default == argparse.SUPPRESS:
                default = "–"
            help_text = (action.help or "").replace("%%", "%")
            if action.choices and not action.option_strings:
                help_text += " (" + ", ".join(map(str, action.choices)) + ")"
            lines.append(f"| `{cell(flag)}` | {cell(default)} | {cell(help_text)} |")
    return "\n".join(lines) + "\n"


# ---- registries ----

def registries_page() -> str:
    from editguard.editors.registry import BUILTIN_EDITORS, ENTRY_POINT_GROUP
    from editguard.models.registry import FAMILIES, MODEL_TYPES, MODELS
    from editguard.tasks import LM_EVAL_TASKS, TASKS

    lines = ["# Registries", "", GENERATED, "",
             "## Editors", "",
             f"Built in; a user's editor is `package.module:Class` or an entry point of the group "
             f"`{ENTRY_POINT_GROUP}` ([your own editor](../guides/own-editor.md)).", "",
             "| name | class | arguments |", "|---|---|---|"]
    for name, (target, kwargs) in BUILTIN_EDITORS.items():
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        lines.append(f"| `{name}` | `{target}` | {code(args)} |")
    lines += ["", "## Models", "",
              "`--model` takes one of these names, a local directory or a Hugging Face id already in the cache "
              "([your own model](../guides/own-model.md)).", "",
              "| name | kind | family | source | edit layer | BOS rule | note |", "|---|---|---|---|---:|---|---|"]
    for spec in MODELS.values():
        lines.append(f"| `{spec.name}` | {spec.kind} | {spec.family} | {code(spec.source)} | {spec.edit_layer} | "
                     f"{spec.ppl_bos} | {cell(spec.note)} |")
    lines += ["", "## Families", "",
              "Where each architecture keeps the modules an editor touches (`{}` is the layer index).", "",
              "| family | model types | block | MLP | rewritten projection | final norm | LM head | embedding |",
              "|---|---|---|---|---|---|---|---|"]
    for f in FAMILIES.values():
        types = ", ".join(sorted(t for t, fam in MODEL_TYPES.items() if fam == f.name))
        lines.append(" | ".join(["", f"`{f.name}`", cell(types), code(f.layer), code(f.mlp), code(f.rewrite),
                                 code(f.final_norm), code(f.lm_head), code(f.embedding), ""]).strip())
    lines += ["", "## Downstream tasks", "",
              "`--downstream` and `editguard eval --tasks` ([downstream probes](../guides/downstream.md)).", "",
              "| name | kind | metric | data files | random | what |", "|---|---|---|---|---|---|"]
    for t in TASKS.values():
        rnd = t.random if isinstance(t.random, (int, float)) else "computed from the data"
        lines.append(f"| `{t.name}` | {t.kind} | {t.metric} | {cell(', '.join(f'`{p}`' for p in t.files))} | "
                     f"{rnd} | {cell(t.description)} |")
    lines += ["", "lm-evaluation-harness names accepted as aliases (`NAME:N` for N-shot):", "",
              "| lm-eval name | shots → editguard task |", "|---|---|"]
    for name, by_shots in LM_EVAL_TASKS.items():
        lines.append(f"| `{name}` | " + ", ".join(f"{n}: `{t}`" for n, t in by_shots.items()) + " |")
    return "\n".join(lines) + "\n"


# ---- JSON schema ----

def schema_page() -> str:
    from editguard.run.records import METRICS, SCHEMA_VERSION, VERDICTS, CaseRecord, json_schema

    schema = json_schema()
    metrics = {m.name: m for m in METRICS}
    lines = ["# JSON report schema", "", GENERATED, "",
             f"`--editguard-json PATH` writes one JSON object, `\"schema\": {SCHEMA_VERSION}`. The types below are "
             "`editguard/run/records.py`'s; the JSON Schema (shipped as `editguard/run/report.schema.json`) is at the "
             "end. A non-finite number is written as `null` and named in the record's `non_finite` map.", "",
             "## Top level", "", "| key | required | type | meaning |", "|---|---|---|---|"]
    required = set(schema.get("required", []))
    for key, prop in schema["properties"].items():
        kind = prop.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        lines.append(f"| `{key}` | {'yes' if key in required else ''} | {cell(kind)} | "
                     f"{cell(prop.get('description', ''))} |")
    lines += ["", "## A case record", "",
              "One per edited case, batch or sequence step. `verdict` is one of "
              + ", ".join(f"`{v}`" for v in VERDICTS) + ".",
              "", "| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(CaseRecord):
        default = "" if f.default is dataclasses.MISSING else f"`{f.default!r}`"
        meaning = metrics[f.name].meaning if f.name in metrics else ""
        lines.append(f"| `{f.name}` | {code(f.type)} | {default} | {cell(meaning)} |")
    lines += ["", "## The JSON Schema", "", "```json", json.dumps(schema, indent=2, ensure_ascii=False), "```"]
    return "\n".join(lines) + "\n"


# ---- exit codes and errors ----

def _error_classes():
    import editguard
    from editguard.errors import EditguardError

    for info in pkgutil.walk_packages(editguard.__path__, "editguard."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:   # an optional dependency (matplotlib for the plots) is not installed
            continue
    seen, found = set(), []

    def walk(cls):
        for sub in cls.__subclasses__():
            if sub not in seen and sub.__module__.startswith("editguard"):
                seen.add(sub)
                found.append(sub)
                walk(sub)

    walk(EditguardError)
    return [EditguardError, *sorted(found, key=lambda c: (c.__module__, c.__name__))]


def _doc(cls) -> str:
    return cell((inspect.getdoc(cls) or "").split("\n\n")[0])


def exit_codes_page() -> str:
    from editguard import errors
    from editguard.cli import EXIT_CODES

    kinds = [getattr(errors, name) for name in errors.__all__ if inspect.isclass(getattr(errors, name))]
    codes = {getattr(errors, n): n for n in ("EXIT_OK", "EXIT_FAILED", "EXIT_USAGE")}
    lines = ["# Exit codes", "", GENERATED, "", "## The `editguard` command", "",
             "As `editguard --help` lists them:", "", "```", EXIT_CODES, "```", "",
             "`editguard report` also exits 1 on the report of an incomplete run (one that was cancelled or "
             "killed, or recovered from its journal).", "",
             "| constant | code |", "|---|---:|"]
    lines += [f"| `editguard.errors.{name}` | {value} |" for value, name in codes.items()]
    lines += ["", "A code-2 error is one line on stderr, `editguard COMMAND: what and where` (the option, the file or "
              "the model), never a traceback. The library raises it as an `editguard.errors.EditguardError` whose kind "
              "carries the code:", "", "| kind | exit code | what |", "|---|---:|---|"]
    lines += [f"| `{k.__name__}` | {k.exit_code} | {_doc(k)} |" for k in kinds]
    lines += ["", "## A pytest run", "",
              "pytest's own exit codes apply: 0 all passed, 1 a test failed (or a run-level gate failed: a "
              "regression against `--editguard-compare`, quality mode's minimum), 2 interrupted, 4 a usage error "
              "(an editguard option with a bad value, an unwritable output, an unusable saved report: the same "
              "errors as above, turned into a usage error at start-up), 5 no tests collected. An error that "
              "only shows when a test sets up (a model that does not load, an untrained MEND) fails that test "
              "with the message naming the option.", "", "Every [error class](errors.md)."]
    return "\n".join(lines) + "\n"


def errors_page() -> str:
    lines = ["# Errors", "", GENERATED, "",
             "Every exception class editguard raises on purpose derives from `editguard.errors.EditguardError` (and, "
             "where it did before, from a builtin such as `ValueError`, so `except ValueError` keeps working). Its "
             "kind gives the [exit code](exit-codes.md).", "",
             "| class | module | derives from | exit code | what |", "|---|---|---|---:|---|"]
    for cls in _error_classes():
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        lines.append(f"| `{cls.__name__}` | `{cls.__module__}` | {cell(bases)} | {cls.exit_code} | {_doc(cls)} |")
    return "\n".join(lines) + "\n"


PAGES = {"options.md": options_page, "cli.md": cli_page, "registries.md": registries_page,
         "json-schema.md": schema_page, "exit-codes.md": exit_codes_page, "errors.md": errors_page}


def generate() -> dict[str, str]:
    """reference/<name> -> Markdown."""
    return {f"reference/{name}": make() for name, make in PAGES.items()}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/reference")
    for name, text in generate().items():
        path = out / Path(name).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
