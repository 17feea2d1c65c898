"""`hare speak` / `hare voices` on tiny models: outputs, report, stdout, and one-line errors with exit code 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import soundfile

from hare import cli

from tiny_models import save_official_layout, tiny_models, write_voice

FAST = ["--preset", "ultra_fast", "--candidates", "2", "--steps", "3", "--max-codes", "20", "-q"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return save_official_layout(tiny_models(), tmp_path_factory.mktemp("models"))


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HARE_HOME", str(tmp_path / "home"))
    voices = tmp_path / "voices"
    write_voice(voices / "alice")
    return voices


def test_speak_writes_wav_and_report(models_dir, env, tmp_path):
    out, report = tmp_path / "o.wav", tmp_path / "r.json"
    code = cli.main(["speak", "Hello world.", "--voice", "alice", "--voices-dir", str(env), "--models-dir",
                     str(models_dir), "-o", str(out), "--report", str(report), "--seed", "1",
                     "--likelihood-weight", "0.5", "--voice-match", "0.5", *FAST])
    assert code == 0
    data, sr = soundfile.read(out)
    assert sr == 24000 and len(data) > 0
    r = json.loads(report.read_text())
    assert set(r["stages"]) >= {"autoregressive", "diffusion", "vocoder"}
    assert r["audio_s"] == pytest.approx(len(data) / 24000, abs=1e-3)
    assert r["settings"]["num_candidates"] == 2 and r["settings"]["diffusion_steps"] == 3
    assert r["settings"]["likelihood_weight"] == 0.5  # reranked with the GPT's likelihood blended in
    assert r["settings"]["voice_match"] == 0.5


def test_speak_to_stdout_and_from_file(models_dir, env, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Read from a file.")
    proc = subprocess.run([sys.executable, "-m", "hare.cli", "speak", "-f", str(text), "--voice",
                           str(env / "alice"), "--models-dir", str(models_dir), "-o", "-", *FAST],
                          capture_output=True, env={**__import__("os").environ})
    assert proc.returncode == 0, proc.stderr.decode()
    data, sr = soundfile.read(io.BytesIO(proc.stdout))
    assert sr == 24000 and len(data) > 0


@pytest.mark.parametrize("args,needle", [
    (["speak", "", "--voice", "alice"], "empty"),
    (["speak", "Hi.", "--voice", "nobody"], "unknown voice"),
    (["speak", "Hi.", "--voice", "../etc"], "voice folder not found"),
    (["speak", "Hi.", "--voice", "alice", "--models-dir", "/nonexistent"], "models folder not found"),
    (["speak", "Hi.", "--voice", "alice", "--steps", "0"], "must be at least 1"),
    (["speak", "Hi.", "--voice", "alice", "--top-p", "7"], "must be in (0, 1], got 7"),
    (["speak", "Hi.", "--voice", "alice", "--voice-match", "1.5"], "must be in [0, 1], got 1.5"),
    (["speak", "Hi.", "--voice", "alice", "--temperature", "0"], "must be in (0, 10]"),
    (["speak", "Hi.", "--voice", "alice", "--candidates", "2.5"], "expected a whole number"),
    (["speak", "Hi.", "--voice", "alice", "--cond-free", "maybe"], "invalid choice"),
    (["speak", "Hi.", "--voice", "alice", "--preset", "turbo"], "invalid choice"),
    (["speak", "Hi.", "--voice", "alice", "--likelihood-weight", "0.7", "--alignment-weight", "0.5"], "at most 1"),
    (["speak", "Hi.", "--voice", "alice", "--alignment-weight", "0.5", *FAST], "trained with guided attention"),
])
def test_errors_are_one_line_exit_2(models_dir, env, args, needle, capsys):
    full = args + ["--voices-dir", str(env)]
    if "--models-dir" not in args:
        full += ["--models-dir", str(models_dir)]
    try:
        code = cli.main(full)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_voice_with_no_usable_audio(models_dir, env, capsys):
    (env / "broken").mkdir()
    (env / "broken" / "x.wav").write_text("not audio")
    code = cli.main(["speak", "Hi.", "--voice", "broken", "--voices-dir", str(env), "--models-dir",
                     str(models_dir), *FAST])
    assert code == 2 and "no usable audio" in capsys.readouterr().err


def test_missing_model_files(tmp_path, env, capsys):
    (tmp_path / "empty_models").mkdir()
    code = cli.main(["speak", "Hi.", "--voice", "alice", "--voices-dir", str(env), "--models-dir",
                     str(tmp_path / "empty_models"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "autoregressive.pth" in err


def test_voices_commands(env, tmp_path, capsys):
    clip = write_voice(tmp_path / "src", clips=1) / "clip0.wav"
    assert cli.main(["voices", "add", "dave", str(clip)]) == 0
    assert cli.main(["voices", "list"]) == 0
    assert "dave" in capsys.readouterr().out
    assert cli.main(["voices", "show", "dave"]) == 0
    assert "22050 Hz" in capsys.readouterr().out
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    assert cli.main(["voices", "add", "eve", str(bad)]) == 2
    assert cli.main(["voices", "add", "../x", str(clip)]) == 2
    assert cli.main(["voices", "remove", "dave"]) == 0


def test_stream_to_stdout_and_file(models_dir, env, tmp_path):
    text = "First sentence of the stream. " * 5 + "And a second part that makes another chunk. " * 5
    out, report = tmp_path / "s.wav", tmp_path / "r.json"
    assert cli.main(["speak", text, "--voice", "alice", "--voices-dir", str(env), "--models-dir", str(models_dir),
                     "--stream", "-o", str(out), "--report", str(report), "--seed", "0", *FAST]) == 0
    data, sr = soundfile.read(out)
    r = json.loads(report.read_text())
    assert sr == 24000 and r["settings"]["chunks"] >= 2
    assert r["audio_s"] == pytest.approx(len(data) / 24000, abs=1e-3) and 0 < r["first_audio_s"] <= r["total_s"] + r["load_s"]
    proc = subprocess.run([sys.executable, "-m", "hare.cli", "speak", text, "--voice", str(env / "alice"),
                           "--models-dir", str(models_dir), "--stream", "-o", "-", "--seed", "0", *FAST],
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    streamed = np.frombuffer(proc.stdout[44:], dtype="<i2").astype(np.float32) / 32767
    assert proc.stdout[:4] == b"RIFF" and abs(len(streamed) - len(data)) == 0
    assert np.abs(streamed - data).max() < 2e-4


def test_hifigan_decoder_streams_to_stdout(models_dir, env, tmp_path):
    """--decoder hifigan --stream: audio pieces while the codes are sampled, the same audio as one shot."""
    args = ["speak", "Hello there, this is a longer sentence.", "--voice", "alice", "--voices-dir", str(env),
            "--models-dir", str(models_dir), "--decoder", "hifigan", "--seed", "1", "--max-codes", "30", "-q"]
    out, report = tmp_path / "h.wav", tmp_path / "h.json"
    assert cli.main([*args, "-o", str(out), "--report", str(report)]) == 0
    data, sr = soundfile.read(out)
    r = json.loads(report.read_text())
    assert sr == 24000 and "hifigan" in r["stages"] and "diffusion" not in r["stages"]
    assert r["settings"]["decoder"] == "hifigan" and r["settings"]["num_candidates"] == 1
    proc = subprocess.run([sys.executable, "-m", "hare.cli", *args, "--stream", "--stream-first", "2",
                           "--stream-every", "3", "-o", "-"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    streamed = np.frombuffer(proc.stdout[44:], dtype="<i2").astype(np.float32) / 32767
    assert len(streamed) == len(data) and np.abs(streamed - data).max() < 2e-4


def test_hifigan_decoder_errors_are_one_line(env, tmp_path, capsys):
    models = save_official_layout({k: v for k, v in tiny_models().items() if k != "hifi_decoder"},
                                  tmp_path / "nohifi")
    code = cli.main(["speak", "Hello.", "--voice", "alice", "--voices-dir", str(env), "--models-dir", str(models),
                     "--decoder", "hifigan", "-q", "-o", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "decoder='hifigan' needs" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as bad_choice:  # argparse's own usage error
        cli.main(["speak", "Hello.", "--decoder", "wavenet"])
    assert bad_choice.value.code == 2


@pytest.mark.parametrize("device", ["nonsense", "tpu", *([] if torch.cuda.is_available() else ["cuda", "cuda:0"])])
def test_unavailable_device_is_one_line(env, device, capsys):
    code = cli.main(["speak", "Hello.", "--device", device, "-q", "-o", "x.wav"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "device" in err and len(err.splitlines()) == 1 and "Traceback" not in err
