import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HARE_SHARED", ROOT.parent / "shared"))
FIXTURES = Path(os.environ.get("HARE_FIXTURES", SHARED / "fixtures" / "cases"))
MANIFEST = SHARED / "fixtures" / "tortoise_state_dict_shapes.json"


@pytest.fixture(scope="session")
def manifest_path() -> Path:
    if not MANIFEST.is_file():
        pytest.skip(f"state-dict manifest not found at {MANIFEST}")
    return MANIFEST
