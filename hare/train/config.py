"""A training run's configuration: the YAML schema (`TrainConfig` and its `data`, `optim` and `train` sections),
its checks, `section.key=value` overrides, and building the frozen dataclasses from dicts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hare.train import TrainingError


def dataclass_from_dict(cls, values: Mapping[str, Any] | None, what: str):
    """Build a dataclass from a dict, refusing unknown keys; lists become tuples (the configs are frozen)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainingError(f"unknown {what} settings: {', '.join(unknown)} (known: {', '.join(fields)})")

    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, list) else v

    kwargs = {name: freeze(value) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TrainingError(f"invalid {what} settings: {exc}") from None


@dataclass(frozen=True)
class DataSettings:
    train: str = ""  # LJSpeech folder, LibriTTS tree or path|text|speaker manifest
    eval: str | None = None  # held-out manifest (periodic evaluation); none = no evaluation
    format: str = "auto"
    cache_dir: str | None = None  # default: <out_dir>/cache
    vqvae: str | None = None  # Hare VQ-VAE (.safetensors) for the code-based objectives
    batch_size: int = 8  # per rank and micro-batch
    eval_batch_size: int | None = None
    eval_batches: int = 0  # 0 = the whole held-out set
    workers: int = 2  # data-loader worker processes per rank
    preprocess_workers: int = 2  # feature-caching processes (0/1 = in this process)
    bucket_batches: int = 32
    drop_last: bool = True
    min_seconds: float | None = None  # None = the objective's limits
    max_seconds: float | None = None
    max_text_tokens: int | None = None


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01  # not applied to biases and norm gains
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | linear | multistep
    min_lr_ratio: float = 0.0  # floor of cosine/linear decay, as a fraction of lr
    milestones: tuple[int, ...] = ()  # multistep
    gamma: float = 0.5  # multistep factor
    grad_clip: float | None = 1.0
    accumulate: int = 1


@dataclass(frozen=True)
class RunSettings:
    steps: int = 1000
    seed: int = 1234
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end (when data.eval is set)
    save_every: int = 500
    keep_checkpoints: int = 3
    amp: str = "auto"  # auto (bf16 or fp16 on CUDA, off on CPU) | off | bf16 | fp16
    ema: Any = "auto"  # "auto" = the objective's default; a decay such as 0.999; null = none
    init: str | None = None  # fine-tune from: official .pth, Hare .safetensors, or a model name (tortoise-v2)
    init_kwargs: dict | None = None  # reference constructor arguments of a non-official-size .pth (null = official)
    device: str = "auto"
    cpu_kernels: str = "auto"  # auto: linear layers on oneDNN when training float32 on a CPU (hare.models.packed) | off
    progress: bool = True
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainConfig:
    objective: str
    out_dir: str
    model: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    data: DataSettings = DataSettings()
    optim: OptimSettings = OptimSettings()
    train: RunSettings = RunSettings()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        values = dict(values)
        known = {"objective", "out_dir", "model", "options", "data", "optim", "train"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingError(f"unknown config sections: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for required in ("objective", "out_dir"):
            if not values.get(required):
                raise TrainingError(f"the config needs `{required}`")
        data = dataclass_from_dict(DataSettings, values.get("data"), "data")
        if not data.train:
            raise TrainingError("the config needs `data.train` (a manifest or corpus folder)")
        optim = dataclass_from_dict(OptimSettings, values.get("optim"), "optim")
        run = dataclass_from_dict(RunSettings, values.get("train"), "train")
        cfg = cls(objective=str(values["objective"]), out_dir=str(values["out_dir"]),
                  model=dict(values.get("model") or {}), options=dict(values.get("options") or {}),
                  data=data, optim=optim, train=run)
        cfg.check()
        return cfg

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> "TrainConfig":
        import yaml

        try:
            values = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml_loader())
        except OSError as exc:
            raise TrainingError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise TrainingError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(values, dict):
            raise TrainingError(f"config {path} must be a mapping of sections")
        for item in overrides or []:
            apply_override(values, item)
        return cls.from_dict(values)

    def check(self) -> None:
        o, r = self.optim, self.train
        if self.data.batch_size < 1 or o.accumulate < 1 or r.steps < 0 or r.log_every < 1:
            raise TrainingError("data.batch_size, optim.accumulate and train.log_every must be >= 1, train.steps >= 0")
        if o.schedule not in ("constant", "cosine", "linear", "multistep"):
            raise TrainingError(f"optim.schedule must be constant, cosine, linear or multistep, not {o.schedule!r}")
        if r.amp not in ("auto", "off", "bf16", "fp16"):
            raise TrainingError(f"train.amp must be auto, off, bf16 or fp16, not {r.amp!r}")
        if r.cpu_kernels not in ("auto", "off"):
            raise TrainingError(f"train.cpu_kernels must be auto or off, not {r.cpu_kernels!r}")
        if r.ema not in ("auto", None) and not (isinstance(r.ema, (int, float)) and 0 < r.ema < 1):
            raise TrainingError(f"train.ema must be auto, null, or a decay in (0, 1), not {r.ema!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_override(values: dict, item: str) -> None:
    """`section.key=value` (value parsed as YAML) into a nested config dict."""
    import yaml

    if "=" not in item:
        raise TrainingError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = values
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise TrainingError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = yaml.load(raw, Loader=yaml_loader())


@functools.lru_cache(maxsize=1)
def yaml_loader():
    """PyYAML's safe loader, also reading exponents without a dot (`1e-4`, `3E5`) as numbers: YAML 1.1 reads
    them as strings, which a learning rate must not silently become."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader
