"""One training loop for every objective, the same on a CPU, one GPU, or many GPUs under `torchrun`.

    hare train configs/gpt-tiny.yaml                      # CPU or one GPU
    torchrun --nproc_per_node 8 -m hare.cli train cfg.yaml # DistributedDataParallel (nccl; gloo on CPU)
    hare train cfg.yaml --resume                           # continue from the newest good checkpoint

What a step does: for each phase of the objective (one, or generator + discriminator for the vocoder),
`accumulate` micro-batches are run forward (under autocast on CUDA) and backward (gradients synchronised
across ranks only on the last one), the loss is checked for NaN/inf on every rank, gradients are unscaled,
clipped and applied, and the learning-rate schedule (linear warmup, then constant / cosine / linear /
multistep) advances. Then the EMA (if any) is updated.

Checkpoints (`<out_dir>/checkpoints/step_XXXXXXXX.pt`, the format in `hare.train.checkpoint`) hold all a run
needs to continue. Resuming on the same hardware continues exactly: on a CPU the weights after N steps are bitwise
those of an uninterrupted run. A checkpoint that fails its checksum or cannot be read is reported and not loaded.

At the end the network is exported in Hare's format (`<out_dir>/final/<kind>.safetensors`, EMA weights if
the objective keeps an EMA), loadable with `hare.checkpoints.load`.

Beside it: `config` (the YAML schema), `checkpoint` (the checkpoint files), `distributed` (the process group),
`optim` (optimiser, schedule, EMA), `rng` (random generator state), `objectives/` (what is trained).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

from hare.errors import CheckpointError
from hare.train import TrainingDiverged, TrainingError
from hare.train.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, list_checkpoints, read_checkpoint,
                                   weights_fingerprint, write_checkpoint)
from hare.train.config import TrainConfig
from hare.train.data import CachedCorpus, LengthBucketSampler, TrainingSet, save_report
from hare.train.distributed import Dist, setup_distributed
from hare.train.objectives import Objective, make_objective
from hare.train.optim import EMA, lr_lambda, make_optimizer
from hare.train.rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------
# Pieces of a step


class PhaseModule(nn.Module):
    """What DDP wraps for one phase: the trained networks are submodules, the read-only ones are not."""

    def __init__(self, objective: Objective, phase, models: Mapping[str, nn.Module]):
        super().__init__()
        self.objective = objective
        self.phase = phase
        self.trained = nn.ModuleDict({k: models[k] for k in phase.trains})
        self._read = {k: models[k] for k in phase.reads}  # not registered: DDP must not sync them
        # set before each call rather than passed, so DDP's input handling never copies them
        self.step = 0
        self.scratch: dict = {}

    def forward(self, batch):
        return self.objective.loss(self.phase.name, {**self.trained, **self._read}, batch, self.step, self.scratch)


# --------------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    exported: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float]
    eval_metrics: dict[str, float]
    samples_per_second: float


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool | str = False):
        self.cfg = config
        self.resume = resume
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_good: Path | None = None
        self.step = 0
        self.epoch = 0
        self.position = 0

    # -- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.dist = d = setup_distributed(cfg.train.device)
        if d.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
        seed_everything(cfg.train.seed)  # every rank builds the same initial weights
        self.objective = make_objective(cfg.objective, cfg.model, cfg.options)
        self.models = self._build_models()
        for m in self.models.values():
            m.to(d.device).train()
        self._setup_data()
        self._setup_loaders()
        self._setup_optim()
        self._wrap()
        seed_everything(cfg.train.seed + 1000003 * d.rank)  # per-rank noise (dropout, timesteps) from here on
        if self.resume:
            self._load_resume()

    def _build_models(self) -> dict[str, nn.Module]:
        obj, init = self.objective, self.cfg.train.init
        if not init:
            models = obj.build_models()
        else:
            source = None
            for turn in (True, False):  # rank 0 first: a hub download or conversion happens once
                if self.dist.main == turn:
                    source = self._load_init(init)
                self.dist.barrier()
            config = dataclasses.replace(source.config, **_config_overrides(obj.config_class, self.cfg.model))
            obj.config = config
            models = obj.build_models()
            obj.load_init(models[obj.main_model()], source, what=f"initial weights {init}")
            log.info("initialised %s from %s", obj.main_model(), init)
        obj.prepare_for_training(models)
        return models

    def _load_init(self, init: str) -> nn.Module:
        from hare import checkpoints

        kind = self.objective.kind
        path = Path(init)
        if not path.exists() and init in checkpoints.REGISTRY:
            path = checkpoints.fetch(kind, checkpoints.REGISTRY[init])
        if path.suffix != ".pth" and path.with_suffix(".safetensors").is_file():
            model, found, _ = checkpoints.load(path)
            if found != kind:
                raise TrainingError(f"{init} holds a {found} model; the {self.objective.name} objective trains {kind}")
            return model
        return checkpoints.load_official_file(kind, path, self.cfg.train.init_kwargs)

    def _setup_data(self) -> None:
        """Validate and cache the training (and held-out) data: rank 0 first, then the others."""
        cfg, d, obj = self.cfg, self.dist, self.objective
        limits = obj.limits()
        settings = cfg.data
        cache_dir = Path(settings.cache_dir) if settings.cache_dir else self.out_dir / "cache"
        kwargs = dict(
            vqvae=settings.vqvae, min_seconds=_pick(settings.min_seconds, limits["min_seconds"]),
            max_seconds=_pick(settings.max_seconds, limits["max_seconds"]),
            max_text_tokens=_pick(settings.max_text_tokens, limits["max_text_tokens"]),
            tokenizer=obj.tokenizer if limits.get("needs_text") else None, fmt=settings.format,
        )

        def build(source, workers):
            return CachedCorpus.build(source, cache_dir, obj.features, workers=workers,
                                      progress=cfg.train.progress and d.main, **kwargs)

        # rank 0 decodes and caches; the others then find everything cached
        corpus = report = eval_corpus = None
        for turn in (True, False):
            if d.main == turn:
                corpus, report = build(settings.train, settings.preprocess_workers if d.main else 0)
                if settings.eval:
                    eval_corpus, eval_report = build(settings.eval, settings.preprocess_workers if d.main else 0)
            d.barrier()
        if d.main:
            save_report(report, self.out_dir / "data_report.json")
            (log.warning if report.num_skipped else log.info)("training data: %s", report.summary())
            if settings.eval:
                save_report(eval_report, self.out_dir / "eval_data_report.json")
                (log.warning if eval_report.num_skipped else log.info)("held-out data: %s", eval_report.summary())
        self.corpus, self.eval_corpus = corpus, eval_corpus

    def _setup_loaders(self) -> None:
        cfg, d, obj = self.cfg, self.dist, self.objective
        settings, corpus, eval_corpus = cfg.data, self.corpus, self.eval_corpus
        self.sampler = LengthBucketSampler(corpus.lengths(), settings.batch_size, num_replicas=d.world, rank=d.rank,
                                           shuffle=True, seed=cfg.train.seed, drop_last=settings.drop_last,
                                           bucket_batches=settings.bucket_batches)
        if len(self.sampler) == 0:
            raise TrainingError(f"{len(corpus)} usable utterances make no full batch of {settings.batch_size} per rank "
                                f"on {d.world} rank(s); lower data.batch_size or set data.drop_last: false")
        self.loader = self._loader(TrainingSet(corpus, obj.example, cfg.train.seed), self.sampler, settings.workers)
        if eval_corpus is not None:
            self.eval_sampler = LengthBucketSampler(eval_corpus.lengths(), settings.eval_batch_size or settings.batch_size,
                                                    num_replicas=d.world, rank=d.rank, shuffle=False,
                                                    seed=cfg.train.seed, drop_last=False)
            self.eval_loader = self._loader(TrainingSet(eval_corpus, obj.example, cfg.train.seed + 1),
                                            self.eval_sampler, settings.workers)

    def _loader(self, dataset, sampler, workers):
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.objective.collate, num_workers=workers,
            pin_memory=self.dist.device.type == "cuda", worker_init_fn=_worker_init, persistent_workers=workers > 0,
            generator=torch.Generator(),  # keeps the global RNG untouched when iterators start (exact resume)
        )

    def _setup_optim(self) -> None:
        cfg, obj, d = self.cfg, self.objective, self.dist
        self.optimizers, self.schedulers = {}, {}
        for phase in obj.phases:
            for name in phase.trains:
                opt = make_optimizer(self.models[name], cfg.optim)
                self.optimizers[name] = opt
                self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.steps))
        amp = cfg.train.amp
        if amp == "auto":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if d.device.type == "cuda" else "off"
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(d.device.type) if self.amp_dtype == torch.float16 else None
        if cfg.train.cpu_kernels == "auto" and d.device.type == "cpu" and self.amp_dtype is None:
            from hare.models.packed import onednn_training_linears

            n = sum(onednn_training_linears(m) for m in self.models.values())
            if n:
                log.info("%d linear layers run on oneDNN (train.cpu_kernels: off to disable)", n)
        decay = obj.default_ema if cfg.train.ema == "auto" else cfg.train.ema
        self.ema = EMA(self.models[obj.main_model()], float(decay)) if decay else None

    def _wrap(self) -> None:
        d, obj = self.dist, self.objective
        self.phase_modules = {}
        for phase in obj.phases:
            module = PhaseModule(obj, phase, self.models)
            if d.enabled:
                module = nn.parallel.DistributedDataParallel(
                    module, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                    find_unused_parameters=obj.find_unused_parameters)
            self.phase_modules[phase.name] = module

    # -- checkpoints -------------------------------------------------------------------------------------
    def _state(self) -> dict:
        d = self.dist
        rngs = [rng_state()]
        if d.enabled:
            rngs = [None] * d.world
            dist.all_gather_object(rngs, rng_state())
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "objective": self.objective.name,
            "model_config": dataclasses.asdict(self.objective.config), "config": self.cfg.to_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position, "world_size": d.world,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rngs,
        }

    def save_checkpoint(self) -> Path | None:
        state = self._state()  # collective: every rank takes part
        path = None
        if self.dist.main:
            for stale in self.ckpt_dir.glob(".step_*.tmp"):  # left by a run killed while writing
                stale.unlink(missing_ok=True)
            path = write_checkpoint(state, self.ckpt_dir / f"step_{self.step:08d}.pt")
            self.last_good = path
            for _, old in list_checkpoints(self.ckpt_dir)[max(1, self.cfg.train.keep_checkpoints):]:
                old.unlink(missing_ok=True)
                old.with_name(old.name + ".sha256").unlink(missing_ok=True)
            log.info("saved checkpoint %s", path)
        self.dist.barrier()
        return path

    def _find_resume(self) -> dict | None:
        if isinstance(self.resume, (str, os.PathLike)) and str(self.resume) not in ("", "latest"):
            state = read_checkpoint(self.resume)  # an explicit file: corrupt = error
            self.last_good = Path(self.resume)
            return state
        problems = []
        for step, path in list_checkpoints(self.ckpt_dir):
            try:
                state = read_checkpoint(path)
            except CheckpointError as exc:
                log.error("%s", exc)
                problems.append(str(exc))
                continue
            if problems:
                log.warning("resuming from the older checkpoint %s (newer ones are corrupt)", path)
            self.last_good = path
            return state
        if problems:
            raise CheckpointError("no usable checkpoint to resume from: " + "; ".join(problems))
        log.warning("no checkpoint in %s; starting from scratch", self.ckpt_dir)
        return None

    def _load_resume(self) -> None:
        state = self._find_resume()
        if state is None:
            return
        obj = self.objective
        if state["objective"] != obj.name:
            raise CheckpointError(f"the checkpoint trains {state['objective']}, the config {obj.name}")
        from hare.checkpoints import load_strict

        for k, m in self.models.items():
            load_strict(m, state["models"][k], what=f"checkpoint {self.last_good} ({k})")
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        rngs = state["rng"]
        if state["world_size"] == self.dist.world and len(rngs) == self.dist.world:
            set_rng_state(rngs[self.dist.rank])
        else:
            log.warning("the checkpoint was written by %d rank(s), this run has %d: the data order and random "
                        "streams continue approximately, not exactly", state["world_size"], self.dist.world)
            self.position = 0
            self.epoch += 1
        log.info("resumed from %s at step %d", self.last_good, self.step)

    # -- batches -----------------------------------------------------------------------------------------
    def _micro_batches(self):
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start_batch = self.position
            for batch in self.loader:
                self.position += 1
                yield batch
            self.epoch += 1
            self.position = 0

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        non_blocking = self.dist.device.type == "cuda"
        return {k: v.to(self.dist.device, non_blocking=non_blocking) if torch.is_tensor(v) else v
                for k, v in batch.items()}

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    # -- one step ----------------------------------------------------------------------------------------
    def train_step(self, micro: list[dict]) -> tuple[dict[str, torch.Tensor], int]:
        """One optimiser step over the micro-batches `micro`; returns (detached metrics, samples on this rank).

        Metrics stay on the device (no host sync for them); the only syncs are the NaN/inf checks.
        """
        obj, d = self.objective, self.dist
        sums: dict[str, torch.Tensor] = {}
        scratch = [{} for _ in micro]
        multi = len(obj.phases) > 1
        for phase in obj.phases:
            module = self.phase_modules[phase.name]
            inner = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
            read_params = [p for k in phase.reads for p in self.models[k].parameters() if p.requires_grad]
            for p in read_params:
                p.requires_grad_(False)
            prefix = f"{phase.name}/" if multi else ""
            try:
                for k in phase.trains:
                    self.optimizers[k].zero_grad(set_to_none=True)
                for j, batch in enumerate(micro):
                    last = j == len(micro) - 1
                    sync = contextlib.nullcontext() if (last or not d.enabled) else module.no_sync()
                    with sync:
                        inner.step, inner.scratch = self.step, scratch[j]
                        with self._autocast():
                            losses = module(batch)
                        scaled = losses["loss"] / len(micro)
                        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    for key, value in losses.items():
                        value = value.detach().float() / len(micro)
                        sums[prefix + key] = sums[prefix + key] + value if prefix + key in sums else value
            finally:
                for p in read_params:
                    p.requires_grad_(True)
            loss = sums[prefix + "loss"]
            if not self._all_finite(bool(torch.isfinite(loss))):
                self._diverged(phase.name, "loss", float(loss), sums)
            params = [p for k in phase.trains for p in self.models[k].parameters() if p.requires_grad]
            for k in phase.trains:
                if self.scaler:
                    self.scaler.unscale_(self.optimizers[k])
            clip = self.cfg.optim.grad_clip
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
            norm_ok = self._all_finite(bool(torch.isfinite(norm)))
            if self.scaler is None and not norm_ok:
                self._diverged(phase.name, "gradient norm", float(norm), sums)
            # with fp16 loss scaling an overflow just skips this update (and lowers the scale)
            sums[prefix + "grad_norm"] = norm.detach().float() if norm_ok else torch.zeros((), device=norm.device)
            if self.scaler is not None:  # fraction of updates skipped for overflow
                sums[prefix + "skipped"] = torch.tensor(0.0 if norm_ok else 1.0, device=norm.device)
            for k in phase.trains:
                if self.scaler:
                    self.scaler.step(self.optimizers[k])
                else:
                    self.optimizers[k].step()
                with warnings.catch_warnings():  # a skipped fp16 step makes the scheduler warn; that is expected
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    self.schedulers[k].step()
        if self.scaler:
            self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.models[obj.main_model()])
        return sums, sum(int(next(iter(b.values())).shape[0]) for b in micro)

    def _mean_over_ranks(self, window: Mapping[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Per-step means of the logged metrics, averaged over ranks (one collective per log line)."""
        keys = sorted(window)
        values = torch.stack([window[k].to(self.dist.device).float() for k in keys]) / max(steps, 1)
        if self.dist.enabled:
            dist.all_reduce(values)
            values /= self.dist.world
        return dict(zip(keys, values.tolist()))

    def _all_finite(self, finite: bool) -> bool:
        if not self.dist.enabled:
            return finite
        flag = torch.tensor([1.0 if finite else 0.0], device=self.dist.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def _diverged(self, phase: str, what: str, value, sums) -> None:
        kept = (f"the last good checkpoint is {self.last_good}" if self.last_good
                else "no checkpoint had been written yet")
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in sums.items())
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: the {phase} {what} is {value} (on this or another rank; "
            f"{terms}). Stopped without saving; {kept}. Lower optim.lr, add optim.warmup_steps or optim.grad_clip, "
            f"or set train.amp: off, then resume from that checkpoint.")

    # -- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_corpus is None:
            return {}
        d, obj = self.dist, self.objective
        for m in self.models.values():
            m.eval()
        sums: dict[str, float] = {}
        count = 0.0
        devices = [d.device.index] if d.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.train.seed)  # the same timesteps/noise at every evaluation
            self.eval_sampler.start_batch = 0
            for i, batch in enumerate(self.eval_loader):
                if self.cfg.data.eval_batches and i >= self.cfg.data.eval_batches:
                    break
                batch = self._to_device(batch)
                n = int(next(iter(batch.values())).shape[0])
                with self._autocast():
                    losses = obj.eval_loss(self.models, batch)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                count += n
        for m in self.models.values():
            m.train()
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
        if d.enabled:
            gathered = [None] * d.world
            dist.all_gather_object(gathered, (keys, totals.tolist()))
            totals = torch.tensor([g[1] for g in gathered], dtype=torch.float64).sum(0)
        return {k: float(totals[i] / max(1.0, float(totals[-1]))) for i, k in enumerate(keys)}

    # -- logging -----------------------------------------------------------------------------------------
    def _open_logs(self):
        self.writer = None
        if not self.dist.main:
            return
        if self.cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra (pip install hare-tts[train])
                log.info("tensorboard is not installed; metrics go to %s only", self.out_dir / "metrics.jsonl")
        self.metrics_file = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")

    def _log(self, kind: str, values: Mapping[str, float]) -> None:
        if not self.dist.main:
            return
        record = {"kind": kind, "step": self.step, "epoch": self.epoch, **{k: round(v, 6) for k, v in values.items()}}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{kind}/{k}", v, self.step)

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, d = self.cfg, self.dist
        self._open_logs()
        accumulate = cfg.optim.accumulate
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc=f"train {cfg.objective}", unit="step",
                   disable=not (d.main and cfg.train.progress), dynamic_ncols=True)
        batches = self._micro_batches()
        window: dict[str, torch.Tensor] = {}
        window_steps, window_samples, window_time = 0, 0, 0.0
        metrics: dict[str, float] = {}
        eval_metrics: dict[str, float] = {}
        throughput = 0.0
        try:
            while self.step < cfg.train.steps:
                t0 = time.perf_counter()
                micro = [self._to_device(next(batches)) for _ in range(accumulate)]
                step_metrics, samples = self.train_step(micro)
                self.step += 1
                window_time += time.perf_counter() - t0
                window_steps += 1
                window_samples += samples * d.world
                for k, v in step_metrics.items():
                    window[k] = window[k] + v if k in window else v
                bar.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    metrics = self._mean_over_ranks(window, window_steps)
                    throughput = window_samples / max(window_time, 1e-9)
                    lr = self.schedulers[self.objective.main_model()].get_last_lr()[0]
                    self._log("train", {**metrics, "lr": lr, "samples_per_s": throughput})
                    shown = metrics.get("loss", next(iter(metrics.values()), float("nan")))
                    bar.set_postfix(loss=f"{shown:.4f}")
                    window, window_steps, window_samples, window_time = {}, 0, 0, 0.0
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
                    eval_metrics = self.evaluate()
                    if eval_metrics:
                        self._log("eval", eval_metrics)
                if cfg.train.save_every and self.step % cfg.train.save_every == 0 and self.step < cfg.train.steps:
                    self.save_checkpoint()
            if self.eval_corpus is not None:
                eval_metrics = self.evaluate()
                self._log("eval", eval_metrics)
            last = self.save_checkpoint()
            exported = self.export()
        finally:
            bar.close()
            if d.main:
                self.metrics_file.close()
                if self.writer is not None:
                    self.writer.close()
        return TrainResult(self.step, self.out_dir, exported, last or self.last_good, metrics, eval_metrics, throughput)

    def export(self) -> Path | None:
        """Write the final network (EMA weights if kept) as Hare safetensors; each rank's fingerprint beside it."""
        from hare import checkpoints

        obj, d = self.objective, self.dist
        final_dir = self.out_dir / "final"
        main = self.models[obj.main_model()]
        if d.enabled:  # every rank records what it holds, so a test (or a user) can see they agree
            final_dir.mkdir(parents=True, exist_ok=True)
            (final_dir / f"weights-rank{d.rank}.sha256").write_text(weights_fingerprint(main) + "\n")
        path = None
        if d.main:
            models = dict(self.models)
            if self.ema is not None:
                fresh = obj.build_models()  # a same-shaped copy (deepcopy refuses weight-norm modules)
                obj.prepare_for_training(fresh)
                averaged = fresh[obj.main_model()].to(self.dist.device)
                self.ema.copy_to(averaged)
                models[obj.main_model()] = averaged.eval()
            module, kind, config = obj.export(models)
            path = checkpoints.save(module, kind, config, final_dir / kind)
            log.info("exported %s weights to %s", kind, path)
        d.barrier()
        return path


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _pick(value, default):
    return default if value is None else value


def _config_overrides(config_class, values: Mapping[str, Any]) -> dict:
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise TrainingError(f"unknown model settings: {', '.join(unknown)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def prepare_data(config: TrainConfig) -> tuple[CachedCorpus, CachedCorpus | None]:
    """Validate the manifests and cache the features `config` needs, without training (`hare data prepare`)."""
    trainer = Trainer(config)
    trainer.dist = Dist()
    trainer.objective = make_objective(config.objective, config.model, config.options)
    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    trainer._setup_data()
    return trainer.corpus, trainer.eval_corpus


def train(config: TrainConfig | str | os.PathLike, resume: bool | str = False,
          overrides: list[str] | None = None) -> TrainResult:
    """Run a training job (the whole of `hare train`). Under torchrun every rank calls this."""
    if not isinstance(config, TrainConfig):
        config = TrainConfig.load(config, overrides)
    trainer = Trainer(config, resume)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        d = getattr(trainer, "dist", None)
        if d is not None and d.initialised_here and dist.is_initialized():
            dist.destroy_process_group()
