import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HARE_SHARED", ROOT.parent / "shared"))
FIXTURES = Path(os.environ.get("HARE_FIXTURES", SHARED / "fixtures" / "cases"))
# the tortoise-tts 3.0.0 networks outside the main pipeline (HiFi-GAN latent decoder, provenance classifier)
FIXTURES_V3 = Path(os.environ.get("HARE_FIXTURES_V3", FIXTURES.parent / "cases-v3"))
MANIFEST = SHARED / "fixtures" / "tortoise_state_dict_shapes.json"

# Hare's compiled kernels (hare.kernels) are built once per test session into a folder of its own, found there
# by every test and subprocess (set before any test module imports hare: modules load the kernels at import;
# tests that move $HARE_HOME would otherwise rebuild them, and nothing goes into the user's cache).
if "HARE_KERNEL_CACHE" not in os.environ:
    _KERNEL_CACHE = tempfile.TemporaryDirectory(prefix="hare-test-kernels-")
    os.environ["HARE_KERNEL_CACHE"] = _KERNEL_CACHE.name


@pytest.fixture(scope="session")
def manifest_path() -> Path:
    if not MANIFEST.is_file():
        pytest.skip(f"state-dict manifest not found at {MANIFEST}")
    return MANIFEST


@pytest.fixture
def one_thread():
    """Many tiny torch ops: thread wake-ups would dominate on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """$HARE_HOME in the test's own folder (no voice library, caches or models of the user's)."""
    monkeypatch.setenv("HARE_HOME", str(tmp_path / "home"))
