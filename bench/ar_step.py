"""One autoregressive decode step of the official-size GPT (random weights), taken apart: where its time goes, and
how far it is from the memory roof, for three ways of packing the linears measured in the same run.

    python bench/ar_step.py [--rows 16] [--position 50] [--repeat 7] [--threads N] [--json runs/ar_step.json]

Loads the official-size GPT (30 layers, 1024 wide) from the random official weights bench/pipeline.py uses
(bench/.cache/official/autoregressive.pth, written if missing), packs three copies of it: `onednn` (every linear
on oneDNN's packed weights: the baseline), `hare` (`pack_linears`' default: the decode-step linears on Hare's
few-row kernel where it is available) and `hare-int8` (every linear on Hare's int8 panels, the fast path's GPT; and
`int8-bf16kv`, the same model over a bfloat16 KV cache: the fast path under `dtype="bf16"`), runs the shared prompt for `--rows` candidates and fills the KV cache
with `--position` codes' worth of (random) keys and values, then times, interleaved over `--repeat` rounds (the
fastest round of each is kept, so that other work on the machine disturbs the comparison less):

  - each linear shape over all 30 layers' own weights (so that the weights stream from memory, as in a step):
    qkv 1024x3072, attn_out 1024x1024, fc 1024x4096 (GELU fused), proj 4096x1024, and the mel head 1024x8194;
  - the attention over the KV cache (every layer, with the new key/value's store, as the step runs it), the
    layer norms (2 per layer, ln_f, final_norm);
  - the whole `decode_step`, and the sampling of the next codes from its logits (`sampling.next_codes`);
  - "rest": the step minus its measured parts (embedding, residual adds, cache writes, Python).

Prints the machine first, then per component the ms per step for each packing, their ratio, and what the
component's weight bytes allow at the measured memory bandwidth (the roof), and the step against its roof
(`machine.ar_step_bytes` / bandwidth). Needs about 4 GB of memory (two packed copies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from machine import ar_step_bytes, describe, line, memory_bandwidth_gbs  # noqa: E402


def build(rows: int, position: int, seed: int = 0):
    from hare import checkpoints, kernels
    from hare.models.packed import pack_linears
    from random_official import write_all

    kernels.status()  # build/load the kernels before anything is timed
    folder = write_all(HERE / ".cache" / "official", files=("autoregressive.pth",))
    state = torch.load(folder / "autoregressive.pth", map_location="cpu", weights_only=True)
    models = {}
    for name, few_rows, int8 in (("onednn", False, False), ("hare", True, False), ("hare-int8", True, True)):
        if int8 and kernels.panel_linear_int8() is None:
            continue
        gpt = checkpoints.convert("autoregressive", state)  # (the plain weights are the state dict's tensors)
        pack_linears(gpt, few_rows=few_rows, int8=int8)
        models[name] = gpt
    del state
    if "hare-int8" in models:  # the same int8 GPT over a bfloat16 KV cache (the fast path under dtype="bf16")
        models["int8-bf16kv"] = models["hare-int8"]
    g = torch.Generator().manual_seed(seed)
    cond, text = torch.randn(1, 1024, generator=g), torch.randint(1, 250, (1, 30), generator=g)
    codes = torch.randint(0, 8192, (position + 1, rows), generator=g)
    states = {}
    with torch.no_grad():
        for name, gpt in models.items():
            gpt.kv_cache_dtype = torch.bfloat16 if name == "int8-bf16kv" else None
            logits, cache = gpt.prefill(cond, text, rows, position + 200)
            # the first `position` codes' keys and values: random (what they hold does not change the timing)
            for t in (cache.k, cache.v):
                t[:, :position].normal_(0.0, 0.5, generator=g)
            cache.length += position
            states[name] = (cache, logits)
    return models, states, codes


def timers(models, states, codes, rows: int, position: int):
    """name -> {packing -> (callable timing one step's worth of the component, calls per step)}"""
    from hare.models.gpt import _decode_attention, _decode_step_attention
    from hare.sampling import SamplingSettings, next_codes

    g = torch.Generator().manual_seed(1)
    x1024, x4096 = torch.randn(rows, 1024, generator=g), torch.randn(rows, 4096, generator=g)
    settings = SamplingSettings()
    seen = torch.zeros(rows, 8194, dtype=torch.bool)
    seen[:, 1] = seen[:, 8192] = True
    out = {}

    def per_layer(gpt, attr, x, **kw):
        layers = [getattr(b, attr) for b in gpt.blocks]
        return lambda: [lin(x, **kw) for lin in layers]

    for name, gpt in models.items():
        cache, logits = states[name]

        def decode(gpt=gpt, cache=cache):
            gpt.decode_step(codes[position], position + 1, cache)
            cache.length -= 1  # the same position again next time (its slot is rewritten)

        q = torch.randn(rows, 16, 1, 64, generator=g)
        qkv = torch.randn(rows, 1, 3 * 1024, generator=g)
        layers = gpt.config.layers
        norms = [m for b in gpt.blocks for m in (b.ln1, b.ln2)] + [gpt.ln_f, gpt.final_norm]
        out.setdefault("qkv 1024x3072", {})[name] = (per_layer(gpt, "qkv", x1024), layers)
        out.setdefault("attn_out 1024x1024", {})[name] = (per_layer(gpt, "attn_out", x1024), layers)
        out.setdefault("fc+gelu 1024x4096", {})[name] = (per_layer(gpt, "fc", x1024, gelu_tanh=True), layers)
        out.setdefault("proj 4096x1024", {})[name] = (per_layer(gpt, "proj", x4096), layers)
        out.setdefault("mel_head 1024x8194", {})[name] = ((lambda gpt=gpt: gpt.mel_head(x1024)), 1)
        end = cache.length  # the positions written so far

        def attention(cache=cache, end=end):
            # as the step does it: the new key/value stored and attended in one kernel call where it can run
            # (it writes the slot of position `end`, which the next measurement rewrites)
            for i in range(layers):
                if _decode_step_attention(qkv, cache, i, 16) is None:
                    _decode_attention(q, cache, i, end)

        out.setdefault("attention", {})[name] = (attention, layers)
        out.setdefault("layer norms", {})[name] = ((lambda norms=norms: [n(x1024) for n in norms]), len(norms))
        out.setdefault("sampling", {})[name] = (
            (lambda logits=logits: next_codes(logits, seen, settings, torch.Generator().manual_seed(0))), 1)
        out.setdefault("decode_step", {})[name] = (decode, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16, help="candidates decoded together (the pipeline's batch)")
    ap.add_argument("--position", type=int, default=50, help="codes decoded before timing (the cache's length)")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved rounds; each component keeps its fastest")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    info = describe()
    print(line(info), flush=True)
    t0 = time.perf_counter()
    models, states, codes = build(args.rows, args.position)
    print(f"(loaded and packed in {time.perf_counter() - t0:.0f} s; {args.rows} rows, cache at position "
          f"{args.position} after a 34-position prompt)", file=sys.stderr, flush=True)
    parts = timers(models, states, codes, args.rows, args.position)
    samples = {part: {name: [] for name in impls} for part, impls in parts.items()}
    with torch.no_grad():
        for part, impls in parts.items():  # warm up
            for fn, _ in impls.values():
                fn()
        for _ in range(args.repeat):
            for part, impls in parts.items():
                for name, (fn, _) in impls.items():
                    t = time.perf_counter()
                    fn()
                    samples[part][name].append(time.perf_counter() - t)
    bandwidth = max(info["bandwidth_gbs"], memory_bandwidth_gbs()) * 1e9
    names = list(models)
    best = {part: {n: min(v) for n, v in s.items()} for part, s in samples.items()}
    median = {part: {n: statistics.median(v) for n, v in s.items()} for part, s in samples.items()}
    # what the rest of the step costs: the step minus its measured parts
    rest = {n: best["decode_step"][n] - sum(best[p][n] for p in best if p not in ("decode_step", "sampling"))
            for n in names}
    def layer_bytes(gpt, part):  # the weight bytes the part's linears read per step, as packed
        attr = part.split()[0].split("+")[0]
        if attr == "mel_head":
            return gpt.mel_head.weight_bytes
        return sum(getattr(b, attr).weight_bytes for b in gpt.blocks) if hasattr(gpt.blocks[0], attr) else None

    linear_parts = [p for p in best if layer_bytes(models["hare"], p) is not None]
    print(f"\n{'component (ms per step)':<24}" + "".join(f"{n:>12}" for n in names)
          + f"{'x faster':>10}" + "".join(f"{n + ' GB/s':>17}" for n in names if n != "onednn"))
    for part in best:
        cells = "".join(f"{best[part][n] * 1e3:>12.2f}" for n in names)
        ratio = best[part]["onednn"] / best[part]["hare"]
        extra = "".join(f"{layer_bytes(models[n], part) / best[part][n] / 1e9:>17.1f}" for n in names
                        if n != "onednn") if part in linear_parts else ""
        print(f"{part:<24}{cells}{ratio:>10.2f}{extra}")
    print(f"{'rest (step - parts)':<24}" + "".join(f"{rest[n] * 1e3:>12.2f}" for n in names))
    print(f"(x faster: onednn / hare; GB/s: the layers' weight bytes over their time; the memory reads "
          f"{bandwidth / 1e9:.1f} GB/s)")
    step_bytes = {n: ar_step_bytes(m) for n, m in models.items()}
    for n in names:
        roof = step_bytes[n] / bandwidth
        print(f"{n}: decode_step {best['decode_step'][n] * 1e3:.1f} ms (median {median['decode_step'][n] * 1e3:.1f}) "
              f"vs roof {roof * 1e3:.1f} ms ({step_bytes[n] / 2**20:.0f} MB at {bandwidth / 1e9:.1f} GB/s) = "
              f"{best['decode_step'][n] / roof:.2f}x the roof")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": args.rows, "position": args.position,
                                         "best_s": best, "median_s": median, "rest_s": rest,
                                         "step_bytes": step_bytes, "bandwidth_gbs": bandwidth / 1e9}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
