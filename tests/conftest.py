import os
from pathlib import Path

import pytest
import torch

from editguard import load_model
from tests.tiny_edits import EVERY_TINY_MODEL, TINY_MODELS

pytest_plugins = ["pytester"]

# Tests read the data from EDITGUARD_DATA, or the shared/data directory beside the checkout.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("EDITGUARD_DATA") or DEFAULT_DATA)
    if not (path / "me-ppl" / "ME-PPL_50.json").exists():
        pytest.fail(f"test data not found at {path}: set EDITGUARD_DATA to a copy of shared/data")
    return path


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """Templates and covariance statistics in a cache of this module's own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDITGUARD_CACHE", str(tmp_path_factory.mktemp("editguard-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread; on a shared 2-core machine two threads
    spin-wait for each other and the module runs 20x slower (6 min instead of 15 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=TINY_MODELS)
def tiny(request):
    """Each family's tiny random model in turn: a test that takes it runs once per family."""
    return load_model(request.param)


@pytest.fixture(params=EVERY_TINY_MODEL)
def tiny_family(request):
    """Every known model type's tiny random model in turn (the per-family unit tests)."""
    return load_model(request.param)


@pytest.fixture(scope="module")
def tiny_llama():
    """The tiny random Llama alone, for tests that need one model and no families."""
    return load_model("tiny-llama")


@pytest.fixture
def toy_importable(monkeypatch):
    """`tests.toy_editors` importable by module path, as `--editor=tests.toy_editors:...` needs, here
    and in pytester's subprocesses (through PYTHONPATH)."""
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.syspath_prepend(root)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
