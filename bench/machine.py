"""The machine a benchmark ran on: CPU model, the vector/matrix extensions Hare's kernels care about, threads,
and the memory bandwidth measured now (what bounds a batch-1 autoregressive step).

    python bench/machine.py          # prints one line; benchmarks import `describe()` and print it first
"""

from __future__ import annotations

import json
import os
import platform
import time

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
         "amx_int8", "asimd", "sve")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model, [f for f in FLAGS if f in flags]


def memory_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best of `repeats` reads of a `megabytes` float32 buffer (a sum, so only reads count), in GB/s."""
    import torch

    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def ar_step_bytes(gpt) -> int:
    """Bytes of GPT weights one autoregressive decode step reads: every transformer layer, the final norm and the
    code head once, as loaded (float, oneDNN-packed, int8 panels or dynamic int8); not the embedding and
    position tables (a step reads one row of each), nor the conditioning encoder or the text head (a step never
    runs them). Over the memory bandwidth this is the step's roof: no batch-16 step can be faster than reading
    its weights."""
    total = 0
    for name, module in gpt.named_modules():
        if not name or any(part in name for part in ("emb", "pos", "cond", "text_head")):
            continue
        if type(module).__name__ == "LinearPackedParams":  # counted with its dynamic int8 linear below
            continue
        if type(module).__module__.startswith("torch.ao.nn.quantized"):  # dynamic int8: weight()/bias() unpack
            w, b = module.weight(), module.bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
            continue
        if hasattr(module, "weight_bytes"):  # hare.models.packed.PackedLinear (float32 or int8 panels, oneDNN)
            total += module.weight_bytes
        for p in module.parameters(recurse=False):
            total += p.numel() * p.element_size()
        for b in module.buffers(recurse=False):
            total += b.numel() * b.element_size()
    return total


def describe() -> dict:
    import torch

    model, flags = cpu_model_and_flags()
    return {"cpu": model, "flags": flags, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "bandwidth_gbs": round(memory_bandwidth_gbs(), 1),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def line(info: dict | None = None) -> str:
    info = info or describe()
    return (f"machine: {info['cpu']} | {' '.join(info['flags']) or 'no listed extensions'} | {info['cores']} cores, "
            f"{info['torch_threads']} torch threads | memory read {info['bandwidth_gbs']} GB/s | torch {info['torch']}"
            + (f" | {info['cuda']}" if info["cuda"] else ""))


if __name__ == "__main__":
    info = describe()
    print(line(info))
    print(json.dumps(info))
