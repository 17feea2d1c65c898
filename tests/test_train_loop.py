"""The training loop: exact resume after SIGKILL, DDP under torchrun (gloo), corrupt checkpoints, NaN stops,
fine-tuning from official-layout weights, and every objective end to end on a tiny corpus."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hare import checkpoints
from hare.errors import CheckpointError
from hare.models.configs import VQVAEConfig
from hare.train import TrainingDiverged, TrainingError
from hare.train.checkpoint import read_checkpoint
from hare.train.config import TrainConfig
from hare.train.loop import train
from test_train_data import write_tone_corpus

ROOT = Path(__file__).resolve().parent.parent
CODES = 16

MODELS = {
    "vqvae": dict(num_codes=CODES, hidden=16, codebook_dim=8, resblocks=1, layers=2),
    "gpt": dict(layers=1, dim=32, heads=2, max_mel_tokens=48, max_text_tokens=48, mel_vocab=CODES + 2,
                start_mel_token=CODES, stop_mel_token=CODES + 1, cond_attn_blocks=1),
    "clvp": dict(text_dim=32, speech_dim=32, latent_dim=32, speech_vocab=CODES, text_depth=1, speech_depth=1,
                 text_heads=2, speech_heads=2, text_seq_len=48, speech_seq_len=48),
    "diffusion": dict(channels=32, layers=1, latent_channels=32, num_codes=CODES + 1, heads=2,
                      unconditioned_percentage=0.2),
    "vocoder": dict(channels=4, kpnet_hidden=8, noise_dim=8),
    "speller": dict(speech_vocab=CODES, dim=32, depth=1, heads=1, ff_mult=2),
}
OPTIONS = {
    "vqvae": dict(crop_frames=32, min_seconds=0.5),
    "gpt": dict(cond_frames=32),
    "clvp": {},
    "diffusion": dict(max_codes=8, cond_frames=32),
    "vocoder": dict(segment_frames=8, discriminator=dict(periods=[2, 3], period_channels=[4, 8, 8],
                                                          resolutions=[[256, 64, 256]], resolution_channels=4)),
    "speller": {},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tone corpus (3 speakers), a held-out manifest, a random tiny VQ-VAE, and a shared feature cache."""
    root = tmp_path_factory.mktemp("train_corpus")
    manifest = write_tone_corpus(root / "train", speakers=3, per_speaker=6, seed=1)
    heldout = write_tone_corpus(root / "heldout", speakers=2, per_speaker=2, seed=2)
    torch.manual_seed(0)
    vq = checkpoints.build("vqvae", VQVAEConfig(**MODELS["vqvae"]))
    vq_path = checkpoints.save(vq, "vqvae", vq.config, root / "vq")
    return {"train": manifest, "eval": heldout, "vqvae": vq_path, "cache": root / "cache"}


def make_config(corpus, objective: str, out_dir: Path, **sections) -> dict:
    cfg = {
        "objective": objective, "out_dir": str(out_dir), "model": dict(MODELS[objective]),
        "options": dict(OPTIONS[objective]),  # copies: the sections below update them
        "data": {"train": str(corpus["train"]), "eval": str(corpus["eval"]), "cache_dir": str(corpus["cache"]),
                 "vqvae": str(corpus["vqvae"]), "batch_size": 4, "workers": 0, "preprocess_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
        "train": {"steps": 4, "log_every": 1, "save_every": 2, "progress": False, "tensorboard": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def _final_tensors(out_dir: Path, kind: str) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "final" / f"{kind}.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


@pytest.mark.parametrize("objective,kind", [
    ("vqvae", "vqvae"), ("gpt", "autoregressive"), ("clvp", "clvp2"), ("diffusion", "diffusion_decoder"),
    ("vocoder", "vocoder"), ("speller", "speller"),
])
def test_every_objective_trains_and_exports(corpus, tmp_path, objective, kind):
    cfg = make_config(corpus, objective, tmp_path / "run", train={"steps": 3, "save_every": 0, "eval_every": 2})
    result = train(TrainConfig.from_dict(cfg))
    assert result.step == 3 and result.samples_per_second > 0
    model, found, config = checkpoints.load(result.exported)  # Hare format, loadable by the pipeline
    assert found == kind and config == result_config(objective)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 3]
    assert all(v == v for r in records for v in r.values() if isinstance(v, float))  # no NaN logged
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["kept"] == 18 and report["skipped"] == {}


def result_config(objective: str):
    from hare.train.objectives import make_objective

    return make_objective(objective, MODELS[objective], OPTIONS[objective]).config


def test_killed_run_resumes_bitwise_identically(corpus, tmp_path):
    """SIGKILL right after a checkpoint, then --resume: the same weights (and EMA) as an uninterrupted run."""
    steps = 14
    common = dict(train={"steps": steps, "save_every": 3, "log_every": 1, "seed": 7},
                  data={"workers": 1})  # diffusion: random timesteps, noise, conditioning dropout, EMA
    ref = write_config(make_config(corpus, "diffusion", tmp_path / "ref", **common), tmp_path / "ref.yaml")
    cut = write_config(make_config(corpus, "diffusion", tmp_path / "cut", **common), tmp_path / "cut.yaml")
    cmd = [sys.executable, "-m", "hare.cli", "train"]
    subprocess.run(cmd + [str(ref)], env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(cmd + [str(cut)], env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    killed_after = None
    for line in proc.stderr:
        if "saved checkpoint" in line and "step_00000003" in line:
            proc.send_signal(signal.SIGKILL)
            killed_after = line
            break
    proc.wait(timeout=60)
    assert killed_after and proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "final").exists(), "the run finished before the kill; make it longer"

    done = subprocess.run(cmd + [str(cut), "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr and f"trained {steps} steps" in done.stderr
    _assert_same_weights(_final_tensors(tmp_path / "ref", "diffusion_decoder"),
                         _final_tensors(tmp_path / "cut", "diffusion_decoder"))  # the EMA weights
    last_ref = read_checkpoint(tmp_path / "ref" / "checkpoints" / f"step_{steps:08d}.pt")
    last_cut = read_checkpoint(tmp_path / "cut" / "checkpoints" / f"step_{steps:08d}.pt")
    _assert_same_weights(last_ref["models"]["model"], last_cut["models"]["model"])  # the raw weights
    assert last_ref["position"] == last_cut["position"] and last_ref["epoch"] == last_cut["epoch"]


@pytest.mark.parametrize("objective", ["gpt", "diffusion", "vocoder"])  # plain, unused params + EMA, two phases
def test_torchrun_two_ranks_hold_identical_weights(corpus, tmp_path, objective):
    cfg = make_config(corpus, objective, tmp_path / "ddp", train={"steps": 3, "save_every": 2},
                      data={"batch_size": 2, "eval": None}, optim={"accumulate": 2})
    path = write_config(cfg, tmp_path / "ddp.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "hare.cli", "train", str(path)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = tmp_path / "ddp" / "final"
    fingerprints = [(final / f"weights-rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert fingerprints[0] == fingerprints[1]
    state = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "step_00000003.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank noise streams
    name = "generator" if objective == "vocoder" else "model"
    torch.manual_seed(1234)  # the loop's seed: the weights every rank starts from
    from hare.train.objectives import make_objective

    initial = make_objective(objective, MODELS[objective], OPTIONS[objective]).build_models()[name].state_dict()
    trained = state["models"][name]
    assert any(not torch.equal(trained[k], v) for k, v in initial.items() if k in trained)  # it did train


def test_corrupt_checkpoint_is_reported_not_loaded(corpus, tmp_path, caplog):
    cfg = make_config(corpus, "clvp", tmp_path / "run", train={"steps": 4, "save_every": 2}, data={"eval": None})
    train(TrainConfig.from_dict(cfg))
    ckpts = tmp_path / "run" / "checkpoints"
    newest, older = ckpts / "step_00000004.pt", ckpts / "step_00000002.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte somewhere in the tensors
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*not loaded"):
        read_checkpoint(newest)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(TrainConfig.from_dict(cfg), resume=str(newest))  # an explicit file: refuse
    cfg["train"]["steps"] = 5
    with caplog.at_level("INFO", logger="hare.train"):
        result = train(TrainConfig.from_dict(cfg), resume=True)  # latest: fall back to the older good one
    assert "step_00000004.pt is corrupt" in caplog.text and "resumed from" in caplog.text
    assert str(older) in caplog.text and result.step == 5
    # a checkpoint without its checksum (killed between writes) is not trusted either
    (ckpts / "step_00000005.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no checksum"):
        read_checkpoint(ckpts / "step_00000005.pt")
    # a truncated file with a (stale) checksum
    (ckpts / "step_00000002.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpts / "step_00000002.pt")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    from hare.train.objectives.clvp import CLVPObjective

    real = CLVPObjective.loss

    def loss(self, phase, models, batch, step, scratch):
        out = real(self, phase, models, batch, step, scratch)
        if step >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(CLVPObjective, "loss", loss)
    cfg = make_config(corpus, "clvp", tmp_path / "run", train={"steps": 6, "save_every": 2}, data={"eval": None})
    with pytest.raises(TrainingDiverged, match=r"diverged at step 4: the main loss is nan.*step_00000002\.pt"):
        train(TrainConfig.from_dict(cfg))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert names == ["step_00000002.pt"] and not (tmp_path / "run" / "final").exists()
    read_checkpoint(tmp_path / "run" / "checkpoints" / names[0])  # intact


def test_fine_tune_starts_from_official_layout_weights(corpus, tmp_path):
    from conftest import FIXTURES

    case = FIXTURES / "autoregressive"
    if not (case / "weights.pth").is_file():
        pytest.skip(f"fixture {case} not available")
    meta = json.loads((case / "meta.json").read_text())
    cfg = make_config(corpus, "gpt", tmp_path / "ft", train={"steps": 0, "init": str(case / "weights.pth"),
                                                             "init_kwargs": meta["kwargs"]}, data={"eval": None})
    cfg["model"] = {"dropout": 0.0}  # training-only fields may be changed; shapes come from the checkpoint
    result = train(TrainConfig.from_dict(cfg))
    converted = checkpoints.load_official_file("autoregressive", case / "weights.pth", meta["kwargs"])
    _assert_same_weights(_final_tensors(tmp_path / "ft", "autoregressive"),
                         {k: v.contiguous() for k, v in converted.state_dict().items()})
    assert result.step == 0
    cfg["model"] = {"dim": 48}
    with pytest.raises(CheckpointError, match="wrong shapes"):
        train(TrainConfig.from_dict(cfg))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(TrainingError, match="unknown config sections: optimiser"):
        TrainConfig.from_dict({"objective": "gpt", "out_dir": "x", "data": {"train": "m.csv"}, "optimiser": {}})
    with pytest.raises(TrainingError, match="unknown optim settings: learning_rate"):
        TrainConfig.from_dict({"objective": "gpt", "out_dir": "x", "data": {"train": "m.csv"},
                               "optim": {"learning_rate": 1}})
    with pytest.raises(TrainingError, match="data.train"):
        TrainConfig.from_dict({"objective": "gpt", "out_dir": "x"})
    path = tmp_path / "c.yaml"
    path.write_text("objective: gpt\nout_dir: x\ndata: {train: m.csv}\n")
    cfg = TrainConfig.load(path, ["train.steps=7", "optim.betas=[0.9, 0.96]"])
    assert cfg.train.steps == 7 and cfg.optim.betas == (0.9, 0.96)
    # exponents without a dot are numbers, in the file and on the command line (YAML 1.1 reads them as text)
    path.write_text("objective: gpt\nout_dir: x\ndata: {train: m.csv}\noptim: {lr: 3e-4}\n")
    assert TrainConfig.load(path).optim.lr == 3e-4
    assert TrainConfig.load(path, ["optim.lr=1E-5", "out_dir=1e3x"]).optim.lr == 1e-5
    assert TrainConfig.load(path, ["out_dir=1e3x"]).out_dir == "1e3x"


def test_example_configs_parse():
    configs = sorted((ROOT / "hare" / "train" / "configs").glob("*.yaml"))
    names = {p.stem for p in configs}
    for net in ("vqvae", "gpt", "clvp", "diffusion", "vocoder"):
        assert {f"{net}-tiny", f"{net}-paper"} <= names
    assert {"speller-tiny", "speller-mini"} <= names  # a Hare network: no paper size
    from hare.train.objectives import make_objective

    for p in configs:
        cfg = TrainConfig.load(p)
        make_objective(cfg.objective, cfg.model, cfg.options)  # every field is known


def test_tensorboard_logs_when_installed(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = make_config(corpus, "clvp", tmp_path / "run", train={"steps": 2, "save_every": 0, "tensorboard": True})
    train(TrainConfig.from_dict(cfg))
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from hare.train.checkpoint import write_checkpoint
    from hare.train.rng import rng_state, set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.random(), np.random.normal(), torch.rand(3)  # numpy now holds a cached gaussian
    path = write_checkpoint({"format": "hare-train-checkpoint", "rng": [rng_state()]}, tmp_path / "step_00000001.pt")
    expected = (random.random(), np.random.normal(), torch.rand(3))
    set_rng_state(read_checkpoint(path)["rng"][0])  # loaded with weights_only=True
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert expected[:2] == got[:2] and torch.equal(expected[2], got[2])


def test_fine_tune_starts_from_hare_safetensors(corpus, tmp_path):
    first = train(TrainConfig.from_dict(make_config(corpus, "clvp", tmp_path / "a", data={"eval": None},
                                                    train={"steps": 2, "save_every": 0})))
    cfg = make_config(corpus, "clvp", tmp_path / "b", data={"eval": None},
                      train={"steps": 0, "save_every": 0, "init": str(first.exported)})
    cfg["model"] = {}
    train(TrainConfig.from_dict(cfg))
    _assert_same_weights(_final_tensors(tmp_path / "a", "clvp2"), _final_tensors(tmp_path / "b", "clvp2"))
    wrong = make_config(corpus, "gpt", tmp_path / "c", data={"eval": None}, train={"init": str(first.exported)})
    with pytest.raises(TrainingError, match="holds a clvp2 model"):
        train(TrainConfig.from_dict(wrong))


def test_fine_tune_adds_a_ctc_head_to_a_clvp_without_one(corpus, tmp_path):
    """`train.init` weights without the letter head: the run's model settings add it (fresh), the rest loads;
    a headless run from them must still match them exactly."""
    first = train(TrainConfig.from_dict(make_config(corpus, "clvp", tmp_path / "a", data={"eval": None},
                                                    train={"steps": 1, "save_every": 0})))
    cfg = make_config(corpus, "clvp", tmp_path / "b", data={"eval": None}, options={"ctc_weight": 1.0},
                      train={"steps": 2, "save_every": 0, "init": str(first.exported)})
    cfg["model"] = {"ctc_classes": 29}
    result = train(TrainConfig.from_dict(cfg))
    model, _, config = checkpoints.load(result.exported)
    assert config.ctc_classes == 29 and model.ctc_head.weight.shape == (29 * 2, 32)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ctc"] > 0 for r in rows if r["kind"] == "train")
    # the other way round (a headed CLVP into a headless run) is a mismatch, not silently dropped
    back = make_config(corpus, "clvp", tmp_path / "c", data={"eval": None},
                       train={"steps": 1, "save_every": 0, "init": str(result.exported)})
    back["model"] = {"ctc_classes": 0}
    with pytest.raises(CheckpointError, match="unexpected keys: .*ctc_head"):
        train(TrainConfig.from_dict(back))


def test_export_checkpoint_matches_the_final_export(corpus, tmp_path):
    """`export_checkpoint` of the last checkpoint = what the run exported (EMA weights included)."""
    from hare.train.checkpoint import export_checkpoint

    cfg = make_config(corpus, "diffusion", tmp_path / "run", train={"steps": 2, "save_every": 2, "ema": 0.9})
    result = train(TrainConfig.from_dict(cfg))
    path = export_checkpoint(result.last_checkpoint, tmp_path / "export")
    _assert_same_weights(load_file(str(path)), _final_tensors(tmp_path / "run", "diffusion_decoder"))
    raw = load_file(str(export_checkpoint(result.last_checkpoint, tmp_path / "raw", ema=False)))
    assert any(not torch.equal(raw[k], v) for k, v in _final_tensors(tmp_path / "run", "diffusion_decoder").items())
    with pytest.raises(TrainingError, match="cannot read training checkpoint"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "x")


def test_diffusion_trains_on_hifigan_mels_with_the_aux_loss(corpus, tmp_path):
    """hare-mini's decoder: 80-band HiFi-GAN mels as the target, conditioned on codes, aux mel loss."""
    model = dict(MODELS["diffusion"], in_channels=80, out_channels=160, mel_format="hifigan",
                 conditioning_input="codes")
    cfg = make_config(corpus, "diffusion", tmp_path / "run", model=model,
                      options={"aux_mel_weight": 1.0, "cond_frames": 32},
                      train={"steps": 2, "save_every": 0, "eval_every": 0})
    result = train(TrainConfig.from_dict(cfg))
    m, kind, config = checkpoints.load(result.exported)
    assert config.mel_format == "hifigan" and config.conditioning_input == "codes"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("aux_mel" in r for r in rows if r["kind"] == "train")
    bad = make_config(corpus, "diffusion", tmp_path / "bad", model=dict(model, in_channels=100))
    with pytest.raises(TrainingError, match="in_channels must be 80"):
        train(TrainConfig.from_dict(bad))


def test_export_checkpoint_of_a_fine_tune_uses_the_trained_config(corpus, tmp_path):
    """A run started from other weights (`train.init`) trains their config, not the file's model section."""
    from hare.train.checkpoint import export_checkpoint

    big = dict(MODELS["clvp"], text_depth=2)
    first = train(TrainConfig.from_dict(make_config(corpus, "clvp", tmp_path / "a", model=big, data={"eval": None},
                                                    train={"steps": 1, "save_every": 0})))
    cfg = make_config(corpus, "clvp", tmp_path / "b", data={"eval": None},
                      train={"steps": 2, "save_every": 2, "init": str(first.exported)})
    cfg["model"] = {}  # the file names no sizes: they come from the initial weights
    result = train(TrainConfig.from_dict(cfg))
    path = export_checkpoint(result.last_checkpoint, tmp_path / "export")
    _assert_same_weights(load_file(str(path)), _final_tensors(tmp_path / "b", "clvp2"))


def test_cpu_kernels_train_the_same_weights_as_plain_linears(corpus, tmp_path, caplog):
    # train.cpu_kernels auto (the default on a CPU: linear layers on oneDNN) against off: same losses and
    # weights to float rounding
    from hare.models.packed import packing_available

    if not packing_available():
        pytest.skip("this PyTorch build has no oneDNN linear")
    runs = {}
    for mode in ("auto", "off"):
        cfg = make_config(corpus, "gpt", tmp_path / mode, train={"steps": 3, "save_every": 0, "cpu_kernels": mode})
        caplog.clear()
        with caplog.at_level("INFO", logger="hare.train.loop"):
            runs[mode] = train(TrainConfig.from_dict(cfg))
        assert ("run on oneDNN" in caplog.text) == (mode == "auto")
    (a, _, _), (b, _, _) = (checkpoints.load(runs[m].exported) for m in ("auto", "off"))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-4), name
    losses = {m: [json.loads(line)["loss"] for line in (tmp_path / m / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["kind"] == "train"] for m in runs}
    assert losses["auto"] == pytest.approx(losses["off"], rel=1e-4)
    bad = make_config(corpus, "gpt", tmp_path / "bad", train={"cpu_kernels": "sometimes"})
    with pytest.raises(TrainingError, match="cpu_kernels"):
        TrainConfig.from_dict(bad).check()


def test_diffusion_trains_on_a_frozen_gpts_latents(corpus, tmp_path):
    """Tortoise's decoder: conditioned on a trained GPT's latents (options.gpt), the GPT untouched; only the
    latent path of the conditioning learns (the code path gets no gradient)."""
    from hare.models.configs import DiffusionConfig, GPTConfig

    torch.manual_seed(0)
    gpt = checkpoints.build("autoregressive", GPTConfig(**MODELS["gpt"]))
    gpt_path = checkpoints.save(gpt, "autoregressive", gpt.config, tmp_path / "gpt")
    before = load_file(str(gpt_path))
    model = dict(MODELS["diffusion"], conditioning_input="latents")
    start = checkpoints.build("diffusion_decoder", DiffusionConfig(**model))
    start_path = checkpoints.save(start, "diffusion_decoder", start.config, tmp_path / "start")
    cfg = make_config(corpus, "diffusion", tmp_path / "run", model=model,
                      options={"gpt": str(gpt_path)},
                      train={"steps": 2, "save_every": 0, "eval_every": 2, "init": str(start_path), "ema": None})
    result = train(TrainConfig.from_dict(cfg))
    _, _, config = checkpoints.load(result.exported)
    assert config.conditioning_input == "latents"
    after, initial = load_file(str(result.exported)), load_file(str(start_path))
    assert not torch.equal(after["latent_in.weight"], initial["latent_in.weight"])
    assert torch.equal(after["code_embedding.weight"], initial["code_embedding.weight"])
    _assert_same_weights(load_file(str(gpt_path)), before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2]
    codes_init = checkpoints.save(start, "diffusion_decoder", dataclasses.replace(start.config,
                                                                                  conditioning_input="codes"),
                                  tmp_path / "codes")
    bad = make_config(corpus, "diffusion", tmp_path / "bad", options={"gpt": str(gpt_path)},
                      train={"init": str(codes_init)})
    bad["model"] = {}  # the sizes and the input come from the initial weights: a decoder on codes
    with pytest.raises(TrainingError, match="conditioning_input must be 'latents'"):
        train(TrainConfig.from_dict(bad))


def test_hifi_decoder_trains_on_a_frozen_gpts_latents(corpus, tmp_path):
    """Tortoise v3's latent decoder: STFT + GAN + feature matching on a frozen GPT's latents; the GPT is
    untouched, the exported decoder has its weight norm folded and runs in the pipeline's decode."""
    from hare.models.configs import GPTConfig

    torch.manual_seed(0)
    gpt = checkpoints.build("autoregressive", GPTConfig(**MODELS["gpt"]))
    gpt_path = checkpoints.save(gpt, "autoregressive", gpt.config, tmp_path / "gpt")
    before = load_file(str(gpt_path))
    disc = dict(periods=[2, 3], period_channels=[4, 8, 8], resolutions=[[256, 64, 256]], resolution_channels=4)
    cfg = make_config(corpus, "vocoder", tmp_path / "run", train={"steps": 3, "save_every": 0, "eval_every": 3})
    cfg.update(objective="hifi_decoder", model=dict(latent_dim=32, cond_dim=32, initial_channels=16),
               options=dict(gpt=str(gpt_path), segment_codes=6, discriminator=disc))
    result = train(TrainConfig.from_dict(cfg))
    model, kind, config = checkpoints.load(result.exported)
    assert kind == "hifi_decoder" and config.latent_dim == 32
    assert not any("parametrizations" in k for k in load_file(str(result.exported)))  # weight norm folded
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 3 and all(r["generator/feature"] >= 0 and "generator/adv" in r and
                                        r["generator/stft_mag"] > 0 and "discriminator/disc" in r for r in train_rows)
    _assert_same_weights(load_file(str(gpt_path)), before)
    wav = model.decode(torch.randn(1, 5, 32), torch.randn(1, 32))
    assert wav.shape == (1, model.frames_for(5) * 256) and torch.isfinite(wav).all()
    with pytest.raises(TrainingError, match="latent_dim must be the GPT's width"):
        bad = dict(cfg, out_dir=str(tmp_path / "bad"), model=dict(latent_dim=16, cond_dim=32, initial_channels=16))
        train(TrainConfig.from_dict(bad))
