"""Write random official-size Tortoise weights in the official file layout, from the state-dict manifest.

    python bench/random_official.py OUT_DIR [--manifest ../shared/fixtures/tortoise_state_dict_shapes.json]

Produces autoregressive.pth, diffusion_decoder.pth, clvp2.pth, cvvp.pth, vocoder.pth (wrapped in `model_g`,
with weight-norm g/v pairs), rlg_auto.pth, rlg_diffuser.pth and Tortoise v3's hifidecoder.pth and
classifier.pth: exactly what the official files look like,
with random numbers scaled so that every network runs without overflow. Used by the benchmark and by the
end-to-end CLI check; files already present are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "fixtures" / "tortoise_state_dict_shapes.json"
FILES = ("autoregressive.pth", "diffusion_decoder.pth", "clvp2.pth", "cvvp.pth", "vocoder.pth",
         "rlg_auto.pth", "rlg_diffuser.pth", "hifidecoder.pth", "classifier.pth")


def random_tensor(key: str, shape: list[int], g: torch.Generator) -> torch.Tensor:
    """A plausible value for one official key: unit norms, zero biases, fan-in-scaled weights."""
    leaf = key.rsplit(".", 1)[-1]
    if not shape:  # CLVP/CVVP temperature scalar
        return torch.tensor(math.log(10.0))
    if leaf == "inv_freq":  # rotary frequencies are a constant of the architecture
        dim = shape[0] * 2
        return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    if leaf in ("bias", "b") or key.endswith("norm.bias") or ".ln_" in key and leaf == "bias":
        return torch.zeros(shape)
    if leaf == "g" or leaf == "weight_g" or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    if ".c_attn." in key or ".c_fc." in key or ".c_proj." in key:  # GPT-2 Conv1D layout (in, out)
        fan_in = shape[0]
    if "emb" in key and len(shape) == 2:
        return torch.randn(shape, generator=g) * 0.02
    return torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))


def write_all(out_dir: Path, manifest: Path = DEFAULT_MANIFEST, seed: int = 0, files=FILES) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = json.loads(Path(manifest).read_text())
    for name in files:
        path = out_dir / name
        if path.is_file():
            continue
        g = torch.Generator().manual_seed(seed + FILES.index(name))
        entry = entries[name]
        sd = {k: random_tensor(k, shape, g) for k, shape in entry["keys"].items()}
        if entry.get("wrapped_in"):
            sd = {entry["wrapped_in"]: sd}
        tmp = path.with_suffix(".tmp")
        torch.save(sd, tmp)
        tmp.replace(path)
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write_all(args.out_dir, args.manifest, args.seed)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
