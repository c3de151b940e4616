"""Where suite files live: the user's project first, then the ones shipped in the package
`editguard_suites` (the repository's `suites/` folder). The project's folder is
`./editguard-suites` in the current directory, or the folder named by EDITGUARD_SUITES; it
mirrors the package (`hardcf/<model>.json`, `hardedit/cases.json`, `calibration/...`).
`editguard mine` and `editguard calibrate` write there by default, never into an installed package.
"""

from __future__ import annotations

import importlib.util
import os
import re
import site
import sysconfig
from pathlib import Path

from editguard.cache import cache_dir, inside_package
from editguard.errors import UsageError

__all__ = ["InstalledPathError", "find_mined_suite", "find_suite_file", "is_shipped_suite_file", "prepared_dir",
           "prepared_file", "prepared_fingerprint_of",
           "project_mined_suite_path", "project_suites_dir", "refuse_installed_path", "shipped_suites_dir",
           "suite_file_label"]

PROJECT_SUITES_ENV = "EDITGUARD_SUITES"
PROJECT_SUITES_DEFAULT = "editguard-suites"
SHIPPED_SUITES_PACKAGE = "editguard_suites"


def project_suites_dir() -> Path:
    """The user's suite files: $EDITGUARD_SUITES, else ./editguard-suites (current directory)."""
    return Path(os.environ.get(PROJECT_SUITES_ENV) or PROJECT_SUITES_DEFAULT)


def shipped_suites_dir() -> Path | None:
    """The folder of the installed package editguard_suites (wheel or editable install), found
    at call time without importing it (the library sits below the suites); in a source checkout
    where it is not installed, the checkout's suites/ folder. None when neither exists."""
    spec = importlib.util.find_spec(SHIPPED_SUITES_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "suites" / "__init__.py").is_file():
        return checkout / "suites"
    return None


def find_suite_file(suite: str, name: str) -> Path | None:
    """`<suite>/<name>` from the project's suite folder if it is there, else the shipped one;
    None when neither has it."""
    shipped = shipped_suites_dir()
    for root in (project_suites_dir(), shipped):
        if root is not None and (root / suite / name).is_file():
            return root / suite / name
    return None


def is_shipped_suite_file(path: str | Path) -> bool:
    """Whether a suite file is editguard's own copy (not one in the user's project)."""
    shipped = shipped_suites_dir()
    return shipped is not None and Path(path).resolve().is_relative_to(shipped.resolve())


def suite_file_label(path: str | Path) -> str:
    """How a report names a suite file: `hardcf/<model>.json` for a shipped one; a project's by
    its path, relative to the current directory when under it."""
    resolved = Path(path).resolve()
    if is_shipped_suite_file(resolved):
        return f"{resolved.parent.name}/{resolved.name}"
    cwd = Path.cwd().resolve()
    return str(resolved.relative_to(cwd)) if resolved.is_relative_to(cwd) else str(resolved)


PREPARED_FOLDER = "prepared"


def prepared_dir(fingerprint: str) -> Path:
    """Where `editguard prepare` keeps what it made for the weights with `fingerprint` (the edit
    layer, the screen, the mined list, the calibration): $EDITGUARD_CACHE/prepared/<fingerprint>/.
    The same weights under another name or path find it; other weights never do."""
    return cache_dir() / PREPARED_FOLDER / fingerprint


PREPARED_NAMES = "names.json"   # model name -> fingerprint it had when prepared (a hint: the weights decide)


def prepared_file(fingerprint: str, name: str, step: str) -> Path | None:
    """A file `editguard prepare` made for these weights (`hardcf-rome.json`, `calibration-rome.json`),
    once its step finished (the step's manifest `manifest-<step>.json` is there); None otherwise."""
    folder = prepared_dir(fingerprint)
    path = folder / name
    return path if path.is_file() and (folder / f"manifest-{step}.json").is_file() else None


def prepared_fingerprint_of(model_name: str) -> str | None:
    """The fingerprint `model_name` had when it was last prepared, from the prepared folders' index."""
    import json

    index = cache_dir() / PREPARED_FOLDER / PREPARED_NAMES
    try:
        names = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    except (OSError, ValueError):
        return None
    value = names.get(model_name) if isinstance(names, dict) else None
    return value if isinstance(value, str) else None


def _mined_suite_name(model_name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", model_name).strip("_") + ".json"


def find_mined_suite(model_name: str, suite: str = "hardcf") -> Path | None:
    """The mined list of a model: the project's (`editguard mine` writes it there), else the
    one shipped with editguard_suites; None when the model has neither."""
    return find_suite_file(suite, _mined_suite_name(model_name))


def project_mined_suite_path(model_name: str, suite: str = "hardcf") -> Path:
    """Where `editguard mine` writes a model's mined list by default: the project's suite folder."""
    return project_suites_dir() / suite / _mined_suite_name(model_name)


def _installed_package_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    dirs = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        dirs.add(site.getusersitepackages())
    return [Path(d).resolve() for d in dirs]


class InstalledPathError(UsageError, ValueError):
    """An output path inside an installed package: it would vanish with the next install."""


def refuse_installed_path(path: str | Path) -> None:
    """Raise InstalledPathError (a ValueError) when `path` lies inside an installed package (site-packages)
    or inside editguard's own packages wherever they are (an editable install's checkout:
    editguard.cache.inside_package): suite files written there would vanish with the next install,
    or change the checkout's shipped suites. Says where a project copy goes."""
    resolved = Path(path).resolve()
    package = inside_package(resolved)
    if package is None and not any(resolved.is_relative_to(d) for d in _installed_package_dirs()):
        return
    copy = project_suites_dir() / resolved.parent.name / resolved.name
    if is_shipped_suite_file(resolved) or (package is not None and package.name in ("suites", SHIPPED_SUITES_PACKAGE)):
        advice = (f"copy it into your project first (`mkdir -p {copy.parent} && cp {resolved} {copy}`) and "
                  f"name the copy; the suites read {copy} before the shipped file")
    else:
        advice = "name a file in your project instead"
    installed = any(resolved.is_relative_to(d) for d in _installed_package_dirs())
    where = (f"an installed package ({resolved.parent})" if installed
             else f"editguard's own package {package} (a checkout, e.g. an editable install)")
    raise InstalledPathError(f"{path} is inside {where}; editguard does not write there: {advice}")
