"""MkDocs hooks (mkdocs.yml `hooks:`): the reference pages are generated from the code at build time,
and the results files the pages link to (bench/results, suites/calibration) are shipped with the
site, so each number's link opens the file it comes from."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHIPPED = ("bench/results", "suites/calibration", "suites/hardcf")



def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("editguard_docs_gen_reference", HERE / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    gen_reference = _generator()
    for src_uri, text in gen_reference.generate().items():
        files.append(File.generated(config, src_uri, content=text))
    for folder in SHIPPED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and path.suffix in (".json", ".txt", ".png"):
                files.append(File(path.relative_to(REPO).as_posix(), str(REPO), config["site_dir"],
                                  config["use_directory_urls"]))
    return files
