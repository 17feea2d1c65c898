"""The `hare` command line: `hare speak`, `hare voices`.

Errors a user can cause (bad text, unknown voice, missing model files, invalid options) end the program
with exit code 2 and a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from hare.errors import HareError

log = logging.getLogger("hare")


class UsageError(HareError):
    """An invalid command-line option value."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Which model to load and how (shared by `speak` and `serve`)."""
    p.add_argument("--model", default=None, help="model name: hare-mini (default, in the package) or tortoise-v2")
    p.add_argument("--models-dir", type=Path, help="folder of model files (official .pth or Hare .safetensors)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    _add_precision_options(p)


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    """The load-time speed options (shared by `speak`, `serve` and `eval`)."""
    from hare.loading import DTYPES, QUANTIZE

    p.add_argument("--quantize", choices=QUANTIZE,
                   help="int8 weights (CPU; fast path): the GPT and diffusion decoder on Hare's int8 kernel, "
                        "the CLVP on PyTorch's dynamic int8; none: float weights (default: none, except where "
                        "the model's model.json chooses for CPUs: hare-mini takes int8 with --dtype bf16)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="precision of the AR, rerank and latent stages (default fp32, or the model's CPU choice "
                        "where neither this nor --quantize is given; bf16/fp16 for GPUs; on a CPU with "
                        "--quantize int8, bf16 is the GPT's KV cache, and a HiFi-GAN vocoder runs in bf16 where "
                        "the CPU has bf16 matrix hardware); --dtype fp32 alone: float32 throughout")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 (argparse's convention)
        self.exit(2, f"hare: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from hare import settings
    from hare.settings import PRESETS

    p = _Parser(prog="hare", description="Hare text-to-speech (the Tortoise architecture, fast).")
    p.add_argument("--version", action="version", version=f"hare {_version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("speak", help="synthesise speech from text", description="Synthesise speech from text.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("text", nargs="?", help="the text to speak")
    src.add_argument("-f", "--file", type=Path, help="read the text from FILE ('-' for stdin)")
    s.add_argument("--voice", default=None,
                   help="voice name from the library, a folder of clips, 'a&b' to mix, or 'random' "
                        "(default: the model's own, 'default' for hare-mini)")
    s.add_argument("--voices-dir", action="append", default=[], type=Path, metavar="DIR",
                   help="extra voice library folder (repeatable)")
    s.add_argument("--preset", default="fast", choices=sorted(PRESETS), help="quality/speed preset (default: fast)")
    settings.add_options(s)  # every synthesis setting with a flag, ranges as Settings.validate checks them
    s.add_argument("--seed", type=int, help="random seed (same seed, same audio)")
    _add_model_options(s)
    s.add_argument("-o", "--output", default="hare.wav", help="output file, '-' for WAV on stdout (default hare.wav)")
    s.add_argument("--candidates-out", type=Path, metavar="DIR", help="also write every returned candidate here")
    s.add_argument("-k", "--keep", type=_positive_int, default=1, help="candidates to return (with --candidates-out)")
    s.add_argument("--report", type=Path, help="write a JSON report with per-stage timings here")
    s.add_argument("--chunk-length", type=_positive_int, metavar="CHARS",
                   help="long text is split into chunks of about CHARS characters (default 200, at most 1.5x; "
                        "smaller chunks reach the first audio sooner with --stream)")
    s.add_argument("--stream", action="store_true",
                   help="write audio as each text chunk is ready (a WAV of open length on stdout with -o -); "
                        "with --decoder hifigan, as the codes are sampled")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("voices", help="manage the voice library", description="Manage the voice library.")
    v.add_argument("--voices-dir", action="append", default=[], type=Path, metavar="DIR")
    vsub = v.add_subparsers(dest="voices_command", required=True, parser_class=_Parser)
    vsub.add_parser("list", help="list voices")
    va = vsub.add_parser("add", help="add a voice from audio clips")
    va.add_argument("name")
    va.add_argument("clips", nargs="+", type=Path)
    va.add_argument("--overwrite", action="store_true")
    vs = vsub.add_parser("show", help="show a voice's clips")
    vs.add_argument("name")
    vr = vsub.add_parser("remove", help="delete a voice from the user library")
    vr.add_argument("name")
    _add_training_commands(sub)
    _add_serve_command(sub)
    _add_eval_command(sub)
    _add_detect_command(sub)
    return p


def _version() -> str:
    from hare import __version__

    return __version__


def _read_text(args) -> str:
    if args.file is None:
        return args.text
    if str(args.file) == "-":
        return sys.stdin.read()
    try:
        return args.file.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read text file {args.file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"text file {args.file} is not UTF-8") from None


def _overrides(args) -> dict:
    from hare.settings import overrides_from

    out = overrides_from(args)
    if args.chunk_length is not None:
        out["split_desired_length"] = args.chunk_length
        out["split_max_length"] = max(args.chunk_length * 3 // 2, args.chunk_length + 1)
    return out


def cmd_speak(args) -> int:
    import torch

    from hare.audio import save_audio
    from hare.checkpoints import DEFAULT_MODEL
    from hare.loading import load_model, resolve_model
    from hare.settings import make_settings
    from hare.text import Tokenizer, split_text
    from hare.voices import VoiceLibrary

    text = _read_text(args)
    if args.output != "-" and not Path(args.output).parent.exists():
        raise UsageError(f"output folder does not exist: {Path(args.output).parent}")
    # cheap checks first, so that a typo fails in milliseconds instead of after loading the models
    # a value with a path separator is a folder of clips (use ./NAME for a folder in the current directory)
    voice = None if args.voice is None else Path(args.voice) if os.sep in args.voice else args.voice
    settings = make_settings(args.preset, **_overrides(args))
    if not text or not text.strip():
        raise UsageError("the text is empty: give something to say")
    tokenizer = Tokenizer()
    for chunk in split_text(text, settings.split_desired_length, settings.split_max_length) or [text]:
        tokenizer.encode(chunk)
    t0 = time.perf_counter()
    source = resolve_model(args.model or DEFAULT_MODEL, args.models_dir)  # reads no weights
    if voice is not None:  # the model's own voices count too (a models folder's voices/, a bundled model's)
        VoiceLibrary.default(extra=args.voices_dir, bundled=source.bundled_voices).parse(voice)
    tts = load_model(device=args.device, voices_dirs=args.voices_dir, progress=not args.quiet,
                     quantize=args.quantize, dtype=args.dtype, source=source)
    load_s = time.perf_counter() - t0
    kwargs = dict(voice=voice, preset=args.preset, seed=args.seed, k=args.keep, progress=not args.quiet,
                  **_overrides(args))
    first_audio_s = None
    if args.stream:
        from hare.audio import WavStreamWriter

        start = time.perf_counter()
        parts = []
        rate = tts.output_rate(settings)
        with WavStreamWriter(sys.stdout.buffer if args.output == "-" else args.output, rate) as writer:
            for part in tts.stream(text, **kwargs):
                writer.write(part.audio)
                if first_audio_s is None:
                    first_audio_s = time.perf_counter() - start
                parts.append(part)
        result = parts[-1]
        result.audio = torch.cat([p.audio for p in parts])
        result.candidates = [result.audio]
    else:
        result = tts.tts(text, **kwargs)
        if args.output == "-":
            save_audio(sys.stdout.buffer, result.audio, result.sample_rate)
            sys.stdout.buffer.flush()
        else:
            save_audio(args.output, result.audio, result.sample_rate)
    if args.candidates_out is not None:
        args.candidates_out.mkdir(parents=True, exist_ok=True)
        for i, cand in enumerate(result.candidates):
            save_audio(args.candidates_out / f"candidate_{i}.wav", cand, result.sample_rate)
    if args.report is not None:
        report = {
            "stages": {name: round(sec, 4) for name, sec in result.timings.items()},
            "total_s": round(sum(result.timings.values()), 4),
            "load_s": round(load_s, 4),
            "audio_s": round(result.audio.shape[-1] / result.sample_rate, 4),
            "settings": result.settings,
            # how the model was loaded (a model's cpu_defaults choose these where the command line does not)
            "load": {"quantize": tts.quantize, "dtype": tts.dtype, "vocoder_bf16": tts.vocoder_bf16},
        }
        if first_audio_s is not None:
            report["first_audio_s"] = round(first_audio_s, 4)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.output != "-" and not args.quiet:
        print(f"wrote {args.output} ({result.audio.shape[-1] / result.sample_rate:.2f} s)", file=sys.stderr)
    return 0


def cmd_voices(args) -> int:
    from hare.audio import AR_SAMPLE_RATE, load_audio, validate_clip
    from hare.voices import VoiceLibrary

    lib = VoiceLibrary.default(extra=args.voices_dir)
    if args.voices_command == "list":
        for name in lib.names():
            print(name)
        return 0
    if args.voices_command == "add":
        def check(path: Path) -> None:
            validate_clip(load_audio(path, AR_SAMPLE_RATE), AR_SAMPLE_RATE)

        voice = lib.add(args.name, args.clips, validate=check, overwrite=args.overwrite)
        print(f"added voice {voice.name!r} with {len(voice.clips)} clip(s) in {voice.folder}")
        return 0
    if args.voices_command == "show":
        import soundfile

        voice = lib.get(args.name)
        print(f"{voice.name}: {voice.folder}")
        for clip in voice.clips:
            try:
                info = soundfile.info(str(clip))
                print(f"  {clip.name}  {info.duration:.2f} s  {info.samplerate} Hz  {info.channels} ch")
            except Exception:
                print(f"  {clip.name}  (unreadable)")
        if voice.latents_file:
            print(f"  {voice.latents_file.name}  (precomputed latents)")
        return 0
    if args.voices_command == "remove":
        lib.remove(args.name)
        print(f"removed voice {args.name!r}")
        return 0
    raise AssertionError(args.voices_command)


def _add_training_commands(sub) -> None:
    t = sub.add_parser("train", help="train or fine-tune a network (also under torchrun)",
                       description="Train or fine-tune a network from a YAML config (hare/train/configs/*.yaml).")
    t.add_argument("config", type=Path, help="training config (YAML)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue from the newest good checkpoint in out_dir (or from CKPT)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    d = sub.add_parser("data", help="make, check and cache training data", description="Training data tools.")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    sy = dsub.add_parser("synth", help="synthesise a multi-speaker corpus with flite, espeak-ng, festival, piper",
                         description="Synthesise a multi-speaker corpus (needs: apt-get install flite espeak-ng; "
                                     "festival voices need festival and a festvox package).")
    sy.add_argument("out_dir", type=Path, help="corpus folder (wavs/, train.csv, heldout.csv)")
    sy.add_argument("--sentences", type=Path, default=None,
                    help="text file, one sentence per line (default: 80 sentences shipped with Hare)")
    sy.add_argument("--speaker", action="append", default=[], metavar="SPEC",
                    help="flite:<voice>, espeak:<voice>, festival:<voice> or piper:joe (repeatable; default: all that "
                         "`hare data speakers` lists without --all)")
    sy.add_argument("--heldout-sentences", type=float, default=0.1,
                    help="fraction (<1) or number of sentences held out (default 0.1)")
    sy.add_argument("--heldout-speakers", default="0",
                    help="number of speakers held out, or comma-separated speaker specs (default 0)")
    sy.add_argument("--readers", type=_positive_int, default=None, metavar="N",
                    help="each sentence is read by N training speakers chosen at random (default: all of them)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--workers", type=_positive_int, default=2)
    sp = dsub.add_parser("speakers", help="list the synthetic speakers available here")
    sp.add_argument("--all", action="store_true",
                    help="also the installed Festival voices (not in the default set: some read English by "
                         "another language's rules)")
    ck = dsub.add_parser("check", help="validate a manifest and count unusable rows")
    ck.add_argument("manifest", type=Path, help="LJSpeech folder, LibriTTS tree or path|text|speaker file")
    ck.add_argument("--format", default="auto", choices=("auto", "ljspeech", "libritts", "csv"))
    ck.add_argument("--min-seconds", type=float, default=0.0)
    ck.add_argument("--max-seconds", type=float, default=None)
    es = dsub.add_parser("eval-suite", help="make an evaluation suite from synthetic speakers",
                         description="Each speaker reads the test sentences (real/) and the prompt texts (ref/).")
    es.add_argument("out_dir", type=Path)
    es.add_argument("--sentences", type=Path, required=True, help="test sentences, one per line")
    es.add_argument("--ref-sentences", type=Path, help="prompt texts (default: the first 3 of Hare's list)")
    es.add_argument("--speaker", action="append", required=True, metavar="SPEC",
                    help="flite:<voice>, espeak:<voice> or piper:joe (repeatable)")
    pr = dsub.add_parser("prepare", help="validate and cache the features a training config needs")
    pr.add_argument("config", type=Path)
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")


def _add_eval_command(sub) -> None:
    from hare import settings
    from hare.evaluate import ASR_ENGINES
    from hare.settings import PRESETS

    e = sub.add_parser("eval", help="score a model (and the real voices) for WER, speaker similarity and RTF",
                       description="Evaluate intelligibility (WER), speaker similarity and speed on a suite "
                                   "(SUITE/sentences.txt, SUITE/voices/<name>/{real,ref}/*.wav).")
    e.add_argument("suite", type=Path, help="evaluation suite folder (see `hare data eval-suite`)")
    e.add_argument("--model", default=None,
                   help="model name or folder to evaluate (default: hare-mini); 'none' scores only the real voices")
    e.add_argument("--models-dir", type=Path, help="folder of model files")
    e.add_argument("--preset", action="append", choices=sorted(PRESETS), default=[],
                   help="preset(s) to evaluate (repeatable; default ultra_fast)")
    e.add_argument("--voice", action="append", default=[], help="only these suite voices (repeatable)")
    e.add_argument("--asr", action="append", choices=ASR_ENGINES, default=[],
                   help="speech recogniser(s) for WER (repeatable; default pocketsphinx)")
    e.add_argument("--no-similarity", action="store_true", help="skip speaker similarity (resemblyzer)")
    e.add_argument("--limit", type=_positive_int, help="only the first N sentences")
    e.add_argument("--seed", type=int, default=0, help="seed of the first sentence (the next ones add 1)")
    settings.add_options(e, ["num_candidates", "sampler", "diffusion_steps", "diffusion_start", "voice_match",
                             "voice_warp", "listen_candidates"],
                         {"voice_match": "the equaliser towards each voice's clips, 0 to 1 (default: the model's "
                                         "model.json)",
                          "voice_warp": "the frequency warp towards each voice's clips, 0 to 1 (default: the "
                                        "model's model.json)",
                          "listen_candidates": "the listener's pick among the reranker's best N (default: the "
                                               "model's model.json; 0: off)"})
    _add_precision_options(e)
    e.add_argument("--json", type=Path, help="write the full results (with transcripts) here")
    e.add_argument("--audio-out", type=Path, metavar="DIR", help="keep the synthesised audio here")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def cmd_eval(args) -> int:
    import hare
    from hare import evaluate
    from hare.checkpoints import DEFAULT_MODEL
    from hare.settings import overrides_from

    suite = evaluate.Suite.load(args.suite)
    asr = args.asr or ["pocketsphinx"]
    presets = args.preset or ["ultra_fast"]
    tts, name = None, None
    if (args.model or "").lower() != "none":
        name = args.model or (args.models_dir.name if args.models_dir else DEFAULT_MODEL)
        tts = hare.load_model(args.model or DEFAULT_MODEL, models_dir=args.models_dir, progress=not args.quiet,
                              quantize=args.quantize, dtype=args.dtype)
        # the speed options in the row's system name, so that a table of several runs tells them apart
    overrides = overrides_from(args)
    sampler, steps, start, match, warp, listen = (overrides.get(k) for k in (
        "sampler", "diffusion_steps", "diffusion_start", "voice_match", "voice_warp", "listen_candidates"))
    if tts is not None:
        options = [f"{sampler or 'ddpm'}/{steps}" if steps else sampler, None if start is None else f"start {start:g}",
                   tts.quantize, tts.dtype if tts.dtype != "fp32" else None,
                   None if match is None else f"match {match:g}",
                   None if warp is None else f"warp {warp:g}", None if listen is None else f"listen {listen}"]
        name = " ".join([name] + [o for o in options if o])
    rows = evaluate.evaluate(suite, tts, model_name=name or "model", presets=presets, voices=args.voice or None,
                             asr=asr, similarity=not args.no_similarity, seed=args.seed, limit=args.limit,
                             out_dir=args.audio_out, progress=not args.quiet, **overrides)
    print(evaluate.format_table(rows, asr))
    matrix = evaluate.similarity_matrix(rows)
    if matrix:
        print()
        print("Speaker similarity (cosine, resemblyzer) of each row to every voice's real recordings:")
        print(matrix)
    if args.json is not None:
        evaluate.write_report(rows, args.json, meta={"suite": str(args.suite), "model": name, "presets": presets,
                                                     "asr": asr, "seed": args.seed, "limit": args.limit,
                                                     "sampler": sampler, "steps": steps, "diffusion_start": start,
                                                     "quantize": tts.quantize if tts else None,
                                                     "dtype": tts.dtype if tts else None, "voice_match": match,
                                                     "voice_warp": warp})
    return 0


def _add_detect_command(sub) -> None:
    d = sub.add_parser("detect", help="the probability that Tortoise made an audio file (Tortoise v3's classifier)",
                       description="Print PATH<TAB>probability for each file: how likely Tortoise TTS made it, as "
                                   "Tortoise v3's provenance classifier judges the first ~9.2 s at 24 kHz. Files "
                                   "shorter than 0.5 s or silent are refused.")
    d.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files (WAV, FLAC, OGG/Opus, MP3, ...)")
    d.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="folder holding classifier.pth (official) or classifier.safetensors (Hare) (default: "
                        "the tortoise-v2 model's classifier.pth, downloaded and converted once)")
    d.add_argument("--json", action="store_true",
                   help="print one JSON list of {file, probability} (or {file, error}) instead")


def cmd_detect(args) -> int:
    from hare.detect import load_classifier, prepare_clip, score
    from hare.models.configs import ClassifierConfig

    def one_line(exc: Exception) -> str:
        return " ".join(str(exc).split())

    config = ClassifierConfig()  # the clip's rate and length until the classifier says otherwise
    classifier = None
    rows, failed = [], False
    for path in args.files:
        try:
            clip = prepare_clip(path, rate=config.sample_rate, max_samples=config.max_samples)
            if classifier is None:  # loaded at the first usable file: a typo costs no model load
                try:
                    classifier = load_classifier(args.models_dir)
                except HareError as exc:  # no model: nothing can be judged
                    print(f"hare: error: {one_line(exc)}", file=sys.stderr)
                    return 2
                if (classifier.config.sample_rate, classifier.config.max_samples) != (config.sample_rate,
                                                                                      config.max_samples):
                    config = classifier.config
                    clip = prepare_clip(path, rate=config.sample_rate, max_samples=config.max_samples)
            probability = score(classifier, clip)
        except HareError as exc:  # this file is unusable: say so, go on with the others
            failed = True
            print(f"hare: error: {one_line(exc)}", file=sys.stderr)
            rows.append({"file": str(path), "error": one_line(exc)})
            continue
        rows.append({"file": str(path), "probability": probability})
        if not args.json:
            print(f"{path}\t{probability:.3f}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 2 if failed else 0


def cmd_train(args) -> int:
    from hare.train.loop import train

    logging.getLogger("hare.train").setLevel(logging.INFO)
    result = train(args.config, resume=args.resume or False, overrides=args.overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {result.step} steps ({result.samples_per_second:.1f} samples/s); "
              f"weights: {result.exported}; checkpoint: {result.last_checkpoint}", file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    from hare.train import data, synth

    if args.data_command == "speakers":
        for spec in synth.available_speakers():
            print(spec)
        if args.all:
            for voice in synth.festival_voices():
                print(f"festival:{voice}")
        if not (synth.have_flite() and synth.have_espeak()):
            print(f"hare: some synthesisers are missing; {synth.APT_HINT}", file=sys.stderr)
        return 0
    if args.data_command == "synth":
        held = args.heldout_speakers
        held = int(held) if held.isdigit() else [h.strip() for h in held.split(",") if h.strip()]
        amount = args.heldout_sentences
        sentences = synth.read_sentences(args.sentences or synth.DEFAULT_SENTENCES)
        corpus = synth.make_corpus(sentences, args.out_dir, args.speaker or None,
                                   heldout_sentences=int(amount) if amount >= 1 else amount, heldout_speakers=held,
                                   seed=args.seed, readers=args.readers, workers=args.workers, progress=True)
        print(f"wrote {corpus.counts} clips by {len(corpus.speakers)} speakers: {corpus.train}, {corpus.heldout}")
        return 0
    if args.data_command == "check":
        utterances, report = data.load_manifest(args.manifest, args.format)
        kept, report = data.validate(utterances, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                                     report=report)
        print(report.summary())
        for reason, examples in sorted(report.examples.items()):
            print(f"  {reason}: {', '.join(examples)}")
        return 0
    if args.data_command == "eval-suite":
        from hare.evaluate import make_synth_suite

        sentences = synth.read_sentences(args.sentences)
        refs = synth.read_sentences(args.ref_sentences or synth.DEFAULT_SENTENCES)
        if not args.ref_sentences:
            refs = refs[:3]
        overlap = set(sentences) & set(refs)
        if overlap:
            raise UsageError(f"prompt texts must differ from the test sentences (shared: {sorted(overlap)[0]!r})")
        suite = make_synth_suite(args.out_dir, sentences, args.speaker, refs, progress=True)
        print(f"wrote suite {suite.root}: {len(suite.sentences)} sentences, voices {', '.join(suite.voices)}")
        return 0
    if args.data_command == "prepare":
        from hare.train.config import TrainConfig
        from hare.train.loop import prepare_data

        corpus, eval_corpus = prepare_data(TrainConfig.load(args.config, args.overrides))
        print(f"cached {len(corpus)} training utterances"
              + (f" and {len(eval_corpus)} held-out" if eval_corpus is not None else ""))
        return 0
    raise AssertionError(args.data_command)


def _add_serve_command(sub) -> None:
    from hare import settings
    from hare.settings import PRESETS

    sv = sub.add_parser("serve", help="run the OpenAI-compatible speech server and web page",
                        description="Serve POST /v1/audio/speech (OpenAI-compatible), the voice library API and a "
                                    "web page at /. Needs the server extra: pip install 'hare-tts[server]'.")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=_positive_int, default=8000, help="port (default 8000)")
    _add_model_options(sv)
    sv.add_argument("--model-name", help="model id clients ask for (default: --model, or the folder's name)")
    sv.add_argument("--voices-dir", action="append", default=[], type=Path, metavar="DIR",
                    help="extra voice library folder (repeatable)")
    sv.add_argument("--default-voice", help="voice for requests that name none (default: 'default' if present, "
                                            "else 'random')")
    sv.add_argument("--preset", choices=sorted(PRESETS), help="preset for requests that name none")
    settings.add_options(sv, ["num_candidates", "diffusion_steps", "sampler", "max_codes", "decoder"], {
        "num_candidates": "AR candidates for every request (caps the work)",
        "diffusion_steps": "diffusion steps for every request", "sampler": "diffusion sampler for every request",
        "decoder": "decoder for requests that name none (hifigan: Tortoise v3's fast path)"})
    sv.add_argument("--api-key", help="require this key (Authorization: Bearer KEY) on every route but /health "
                                      "(default: env HARE_API_KEY; none: open)")
    sv.add_argument("--workers", type=_positive_int, default=1, help="synthesis threads (default 1)")
    sv.add_argument("--max-queue", type=int, default=8, help="requests waiting for a worker before 503 (default 8)")
    sv.add_argument("--max-input-chars", type=_positive_int, default=4096, help="longest input text (default 4096)")
    sv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest voice upload in MiB (default 20)")
    sv.add_argument("-q", "--quiet", action="store_true", help="no progress bars while loading")


def cmd_serve(args) -> int:
    import hare
    from hare import server
    from hare.checkpoints import DEFAULT_MODEL
    from hare.settings import make_settings, overrides_from

    if args.max_queue < 0:
        raise UsageError("--max-queue must be >= 0")
    if args.max_upload_mb <= 0:
        raise UsageError("--max-upload-mb must be positive")
    overrides = overrides_from(args)
    make_settings(args.preset or "fast", **overrides)  # bad combinations fail before the models load
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the server needs its extra dependencies ({exc.name} is missing): "
                         "pip install 'hare-tts[server]'") from None
    model = args.model or DEFAULT_MODEL
    api_key = args.api_key or os.environ.get("HARE_API_KEY") or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
    tts = hare.load_model(model, models_dir=args.models_dir, device=args.device, voices_dirs=args.voices_dir,
                          progress=not args.quiet, quantize=args.quantize, dtype=args.dtype)
    name = args.model_name or (args.models_dir.name if args.models_dir is not None and args.model is None else model)
    server.serve(tts, host=args.host, port=args.port, api_key=api_key, workers=args.workers,
                 max_queue=args.max_queue, max_input_chars=args.max_input_chars,
                 max_upload_bytes=int(args.max_upload_mb * 2**20), model_name=name, default_voice=args.default_voice,
                 default_preset=args.preset, overrides=overrides, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="hare: %(message)s")
    try:
        if args.command == "speak":
            return cmd_speak(args)
        if args.command == "voices":
            return cmd_voices(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "data":
            return cmd_data(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "detect":
            return cmd_detect(args)
    except HareError as exc:
        print(f"hare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hare: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
