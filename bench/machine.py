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
