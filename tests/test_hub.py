"""Model download path, offline: a fake hub source, checksum verification, clear errors, one-time conversion."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from hare import checkpoints
from hare.errors import CheckpointError, ModelNotFoundError


class FakeHub(checkpoints.HubSource):
    """Serves files from a local folder, like a hub with those files at its root."""

    def __init__(self, folder: Path, cache: Path, checksum_override: str | None = None):
        super().__init__("fake/repo", cache_dir=cache)
        self.folder = folder
        self.downloads = 0
        self.checksum_override = checksum_override

    def download(self, filename: str) -> Path:
        src = self.folder / filename
        if not src.is_file():
            raise FileNotFoundError(filename)
        self.downloads += 1
        dst = self.cache_dir / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        return dst

    def sha256(self, filename: str) -> str | None:
        if self.checksum_override is not None:
            return self.checksum_override
        return hashlib.sha256((self.folder / filename).read_bytes()).hexdigest()


@pytest.fixture()
def hub_folder(tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(6):
        sd[f"layers.{i}.weight"] = torch.randn(1024, 1024, generator=g) * 0.01
        sd[f"layers.{i}.bias"] = torch.randn(1024, generator=g) * 0.01
    torch.save(sd, folder / "rlg_auto.pth")
    return folder


SPEC = checkpoints.ModelSpec(name="fake-model", description="test", repo_id="fake/repo")


def test_fetch_downloads_verifies_converts_once(tmp_path, hub_folder):
    hub = FakeHub(hub_folder, tmp_path / "cache")
    path = checkpoints.fetch("rlg_auto", SPEC, source=hub, models_root=tmp_path / "models")
    assert path == tmp_path / "models" / "fake-model" / "rlg_auto.safetensors"
    assert path.is_file() and path.with_suffix(".json").is_file()
    again = checkpoints.fetch("rlg_auto", SPEC, source=hub, models_root=tmp_path / "models")
    assert again == path and hub.downloads == 1
    model, kind, _ = checkpoints.load(path)
    official = torch.load(hub_folder / "rlg_auto.pth", weights_only=True)
    assert kind == "rlg_auto"
    assert sorted(round(v.sum().item(), 4) for v in official.values()) == sorted(
        round(v.sum().item(), 4) for v in model.state_dict().values()
    )


def test_fetch_rejects_bad_checksum(tmp_path, hub_folder):
    hub = FakeHub(hub_folder, tmp_path / "cache", checksum_override="0" * 64)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoints.fetch("rlg_auto", SPEC, source=hub, models_root=tmp_path / "models")
    assert not (tmp_path / "models" / "fake-model" / "rlg_auto.safetensors").exists()


def test_fetch_missing_file_says_where_to_put_it(tmp_path):
    hub = FakeHub(tmp_path, tmp_path / "cache")
    with pytest.raises(ModelNotFoundError) as info:
        checkpoints.fetch("rlg_auto", SPEC, source=hub, models_root=tmp_path / "models")
    msg = str(info.value)
    assert "rlg_auto.pth" in msg and "--models-dir" in msg and "huggingface.co/fake/repo" in msg


def test_real_hub_client_offline_gives_clear_error(tmp_path, monkeypatch):
    """The real huggingface_hub code path, forced offline with an empty cache: no network is touched."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HARE_HOME", str(tmp_path / "home"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    spec = checkpoints.REGISTRY["tortoise-v2"]
    with pytest.raises(ModelNotFoundError, match="rlg_auto.pth"):
        checkpoints.fetch("rlg_auto", spec)
