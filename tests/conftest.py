import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# Tests read the data from EDITGUARD_DATA, or the shared/data directory beside the checkout.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("EDITGUARD_DATA") or DEFAULT_DATA)
    if not (path / "me-ppl" / "ME-PPL_50.json").exists():
        pytest.fail(f"test data not found at {path}: set EDITGUARD_DATA to a copy of shared/data")
    return path
