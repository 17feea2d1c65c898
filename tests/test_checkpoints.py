"""The converter against the official state-dict manifest, strictness errors, and Hare's own format."""

from __future__ import annotations

import json

import pytest
import torch

from hare import checkpoints
from hare.errors import CheckpointError

MANIFEST_FILES = {kind: name for kind, name in checkpoints.OFFICIAL_FILES.items()}


def _manifest_state_dict(entry: dict, device: str = "meta") -> dict[str, torch.Tensor]:
    sd = {k: torch.empty(shape, device=device) for k, shape in entry["keys"].items()}
    return {"model_g": sd} if entry.get("wrapped_in") == "model_g" else sd


@pytest.mark.parametrize("kind", sorted(MANIFEST_FILES))
def test_official_sizes_match_manifest(kind, manifest_path):
    """Every official key is mapped, none is missing, every shape matches (meta tensors: no memory, no time)."""
    entry = json.loads(manifest_path.read_text())[MANIFEST_FILES[kind]]
    sd = _manifest_state_dict(entry)
    if kind == "autoregressive":  # the real file carries legacy GPT-2 causal-mask buffers: skipped, nothing else
        for i in range(30):
            sd[f"gpt.h.{i}.attn.bias"] = torch.empty(1, 1, 1012, 1012, device="meta")
            sd[f"gpt.h.{i}.attn.masked_bias"] = torch.empty((), device="meta")
    with torch.device("meta"):
        model = checkpoints.convert(kind, sd)
    n_params = sum(p.numel() for p in model.parameters())
    # Hare folds the vocoder's weight norm: each (weight_g, weight_v) pair becomes one weight of v's shape
    folded_g = sum(torch.Size(s).numel() for k, s in entry["keys"].items() if k.endswith(".weight_g"))
    assert n_params == entry["parameters"] - folded_g
    assert not model.training


def test_real_convert_of_official_size_rlg(manifest_path):
    entry = json.loads(manifest_path.read_text())["rlg_auto.pth"]
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) for k, shape in entry["keys"].items()}
    model = checkpoints.convert("rlg_auto", sd)
    own = model.state_dict()
    # the same numbers ended up somewhere in the model: compare sorted multisets of tensor sums
    assert sorted(round(v.sum().item(), 3) for v in sd.values()) == sorted(round(v.sum().item(), 3) for v in own.values())


def _small_rlg_sd(dim=16):
    g = torch.Generator().manual_seed(1)
    sd = {}
    for i in range(6):
        sd[f"layers.{i}.weight"] = torch.randn(dim, dim, generator=g)
        sd[f"layers.{i}.bias"] = torch.randn(dim, generator=g)
    return sd


def test_missing_key_is_named():
    sd = _small_rlg_sd()
    del sd["layers.2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: .*"):
        checkpoints.convert("rlg_auto", sd, {"channels": 16})


def test_extra_key_is_named():
    sd = _small_rlg_sd()
    sd["layers.9.weight"] = torch.zeros(16, 16)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layers\.9\.weight"):
        checkpoints.convert("rlg_auto", sd, {"channels": 16})


def test_wrong_shape_is_named():
    sd = _small_rlg_sd()
    sd["layers.0.weight"] = torch.zeros(16, 8)
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*\(checkpoint \(16, 8\)"):
        checkpoints.convert("rlg_auto", sd, {"channels": 16})


def test_unknown_kind_and_non_state_dict():
    with pytest.raises(CheckpointError, match="unknown checkpoint kind"):
        checkpoints.convert("wavenet", {})
    with pytest.raises(CheckpointError, match="not a state dict"):
        checkpoints.convert("rlg_auto", [1, 2, 3])
    with pytest.raises(CheckpointError, match="non-tensor"):
        checkpoints.convert("rlg_auto", {"layers.0.weight": "x"})


def test_corrupt_file_is_reported(tmp_path):
    bad = tmp_path / "rlg_auto.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoints.load_official_file("rlg_auto", bad)
    truncated = tmp_path / "trunc.pth"
    torch.save(_small_rlg_sd(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoints.load_official_file("rlg_auto", truncated, {"channels": 16})


def test_safetensors_round_trip(tmp_path):
    model = checkpoints.convert("rlg_auto", _small_rlg_sd(), {"channels": 16})
    path = checkpoints.save(model, "rlg_auto", model.config, tmp_path / "rlg")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded, kind, config = checkpoints.load(path)
    assert kind == "rlg_auto" and config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_safetensors_corrupt_is_reported(tmp_path):
    model = checkpoints.convert("rlg_auto", _small_rlg_sd(), {"channels": 16})
    path = checkpoints.save(model, "rlg_auto", model.config, tmp_path / "rlg")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoints.load(path)


def test_int8_storage_round_trip_and_errors(tmp_path):
    """save(int8=True): weights of 2+ axes as int8 with a float16 scale per last-axis vector, the rest in the
    given dtype; load gives float32 within half a quantisation step; a broken pairing is refused by name."""
    from safetensors.torch import load_file, save_file

    from hare.models.configs import SpellerConfig

    torch.manual_seed(0)
    model = checkpoints.build("speller", SpellerConfig(speech_vocab=64, dim=64, depth=1, heads=1, ff_mult=2))
    with torch.no_grad():
        model.conv1.weight[0, 0] = 0  # an all-zero kernel stays exactly zero
        model.conv1.weight[1, 0] = torch.tensor([1e-6, -3e-7, 0, 2e-6, 0])  # tiny: float16-subnormal scale
    path = checkpoints.save(model, "speller", model.config, tmp_path / "s", dtype=torch.float16, int8=True)
    stored = load_file(str(path))
    assert stored["conv1.weight"].dtype == torch.int8 and stored["conv1.weight:int8_scale"].shape == (64, 64)
    assert stored["emb.weight"].dtype == torch.int8 and stored["emb.weight:int8_scale"].shape == (64,)
    assert stored["conv1.bias"].dtype == torch.float16  # vectors stay float (here float16)
    loaded, kind, _ = checkpoints.load(path)
    assert kind == "speller"
    ref = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == ref[key].dtype
        if ref[key].dim() >= 2 and ref[key].is_floating_point():
            step = (ref[key].abs().amax(dim=-1, keepdim=True) / 127).clamp(min=2.0**-24)
            assert ((value - ref[key]).abs() <= 0.5 * step * 1.01 + 1e-12).all(), key
    assert torch.equal(loaded.conv1.weight[0, 0], torch.zeros(5))
    assert (loaded.conv1.weight[1, 0] - model.conv1.weight[1, 0]).abs().max() < 3e-8  # not flushed to zero
    # much smaller than float16 for 5-tap kernels, and the same function to rounding
    half = checkpoints.save(model, "speller", model.config, tmp_path / "h", dtype=torch.float16)
    assert path.stat().st_size < 0.62 * half.stat().st_size
    codes = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().log_probs(codes), model.eval().log_probs(codes), atol=0.05, rtol=0)
    # scales without their tensor, or of the wrong shape, are refused
    meta = {"hare": json.dumps(json.loads(path.with_suffix(".json").read_text()))}
    for name, change in [("orphan", lambda t: t.pop("conv1.weight")),
                         ("shape", lambda t: t.update({"conv1.weight:int8_scale": torch.ones(3, dtype=torch.float16)}))]:
        tensors = dict(stored)
        change(tensors)
        bad = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        bad.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
        with pytest.raises(CheckpointError, match="int8"):
            checkpoints.load(bad)


def test_a_load_builds_its_empty_module_without_initialising_it(tmp_path):
    """Loading builds each module uninitialised on the CPU: torch.nn.init's functions do nothing in the loading
    thread meanwhile (a rotary table's buffer is still computed), another thread's calls initialise as usual, and
    the originals are back afterwards. A fresh process loading a GPT and a CLVP never imports torch._dynamo (a
    meta-device build did, through PyTorch's Python reference ops: 1.5-2.5 s of every load)."""
    import subprocess
    import sys
    import threading

    from tiny_models import TINY_KWARGS

    originals = {name: getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "kaiming_uniform_")}
    seen = {}

    def other_thread():
        t = torch.zeros(4)
        torch.nn.init.normal_(t)
        seen["other"] = bool(t.abs().sum() > 0)

    with checkpoints._skipped_init():
        t = torch.zeros(4)
        torch.nn.init.normal_(t)
        torch.nn.init.kaiming_uniform_(t[None])
        seen["own"] = bool(t.abs().sum() > 0)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert seen == {"own": False, "other": True}
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
    for kind in ("autoregressive", "clvp2"):
        model = checkpoints.build(kind, checkpoints.config_for(kind, TINY_KWARGS[kind]))
        checkpoints.save(model, kind, checkpoints.config_for(kind, TINY_KWARGS[kind]), tmp_path / kind)
    code = ("import sys, torch; from hare import checkpoints\n"
            f"for kind in ('autoregressive', 'clvp2'): m = checkpoints.load({str(tmp_path)!r} + '/' + kind)[0]\n"
            "assert all(not p.is_meta for p in m.state_dict().values())\n"
            "print('torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
