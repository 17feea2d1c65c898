"""`hare serve`: every route and error through FastAPI's test client, concurrency and disconnects against a real
uvicorn on loopback, the official `openai` client, and one request through the real pipeline on tiny models.

The fake TTS below implements the pipeline's API (`stream`, `tts`, `voices`, `model_id`) with a deterministic
sine per text chunk, so these tests are fast and independent of the networks.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from hare.audio import wav_header  # noqa: E402
from hare.errors import TextError  # noqa: E402
from hare.pipeline import Speech, make_settings  # noqa: E402
from hare.audio import time_stretch
from hare.server import available_formats, create_app, running_server  # noqa: E402
from hare.voices import VoiceLibrary  # noqa: E402

SR = 24000
WORD_SAMPLES = 2400  # the fake speaks 0.1 s per word


# ---------------------------------------------------------------------------------------------------------------
# A fake TTS with the pipeline's API


def chunk_audio(chunk: str, index: int) -> torch.Tensor:
    n = WORD_SAMPLES * max(1, len(chunk.split()))
    t = torch.arange(n, dtype=torch.float32) / SR
    return 0.5 * torch.sin(2 * torch.pi * (200.0 + 50.0 * index) * t)


class FakeTTS:
    """Deterministic sine audio per sentence. `delay` seconds per chunk; `gate` (an Event) blocks every chunk
    until set; `log` records every chunk produced as (text, chunk index)."""

    def __init__(self, voices: VoiceLibrary, delay: float = 0.0, gate: threading.Event | None = None):
        self.voices = voices
        self.model_id = "fake-model"
        self.delay = delay
        self.gate = gate
        self.log: list[tuple[str, int]] = []
        self.seen_kwargs: list[dict] = []
        self._lock = threading.Lock()

    def stream(self, text, voice="random", preset="fast", *, seed=None, progress=False, **overrides):
        settings = make_settings(preset, **overrides)  # SettingsError like the pipeline
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text is empty: give something to say")
        if not re.search(r"[A-Za-z0-9]", text):
            raise TextError("the text has nothing speakable in it")
        self.voices.parse(voice)  # VoiceError like the pipeline
        chunks = [c for c in re.split(r"(?<=[.!?])\s+", text.strip()) if c]
        seed = 1234 if seed is None else int(seed)
        with self._lock:
            self.seen_kwargs.append({"voice": voice, "preset": preset, "seed": seed, **overrides})
        for i, chunk in enumerate(chunks):
            if self.gate is not None:
                self.gate.wait(30)
            if self.delay:
                time.sleep(self.delay)
            with self._lock:
                self.log.append((text, i))
            audio = chunk_audio(chunk, i)
            yield Speech(audio=audio, sample_rate=SR, candidates=[audio], timings={},
                         settings={"seed": seed, "chunks": len(chunks), "preset": preset,
                                   "num_candidates": settings.num_candidates})

    def tts(self, text, voice="random", preset="fast", **kwargs):
        parts = list(self.stream(text, voice, preset, **kwargs))
        audio = torch.cat([p.audio for p in parts])
        return Speech(audio=audio, sample_rate=SR, candidates=[audio], timings={}, settings=parts[-1].settings)


def expected_samples(text: str) -> int:
    return sum(WORD_SAMPLES * max(1, len(c.split())) for c in re.split(r"(?<=[.!?])\s+", text.strip()) if c)


def write_clip(path: Path, seconds: float = 2.0, freq: float = 150.0, amplitude: float = 0.3, sr: int = 22050):
    t = np.arange(int(sr * seconds)) / sr
    soundfile.write(path, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


@pytest.fixture()
def library(tmp_path, monkeypatch):
    """A user library (writable) holding `alice`, and a bundled folder holding `default`."""
    monkeypatch.setenv("HARE_HOME", str(tmp_path / "home"))
    user, bundled = tmp_path / "voices", tmp_path / "bundled"
    (user / "alice").mkdir(parents=True)
    write_clip(user / "alice" / "a.wav")
    (bundled / "default").mkdir(parents=True)
    write_clip(bundled / "default" / "d.wav", freq=220)
    return VoiceLibrary([user, bundled])


@pytest.fixture()
def fake(library):
    return FakeTTS(library)


@pytest.fixture()
def client(fake):
    with TestClient(create_app(fake, model_name="hare-test", max_input_chars=200, max_upload_bytes=400_000)) as c:
        yield c


def assert_error(response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def speak(client, **body):
    return client.post("/v1/audio/speech", json={"model": "hare-test", "voice": "alice", **body})


def sse_events(data: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in data.decode().split("\n") if line.startswith("data: ")]


# ---------------------------------------------------------------------------------------------------------------
# Speech


def test_speech_wav_whole(client, fake):
    text = "Hello there. How are you today?"
    r = speak(client, input=text, response_format="wav", seed=7, preset="ultra_fast")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["x-hare-seed"] == "7" and r.headers["x-hare-chunks"] == "2"
    data, sr = soundfile.read(io.BytesIO(r.content), dtype="float32")
    assert sr == SR and len(data) == expected_samples(text)
    ref = torch.cat([chunk_audio("Hello there.", 0), chunk_audio("How are you today?", 1)]).numpy()
    np.testing.assert_allclose(data, ref, atol=1 / 16000)
    assert fake.seen_kwargs[-1] == {"voice": "alice", "preset": "ultra_fast", "seed": 7}


def test_default_format_is_mp3_like_openai_and_default_voice(client, fake):
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi there friend."})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/mpeg"
    data, sr = soundfile.read(io.BytesIO(r.content))
    assert sr == SR and abs(len(data) - expected_samples("Hi there friend.")) < 3000  # mp3 encoder padding
    assert fake.seen_kwargs[-1]["voice"] == "default"  # the bundled `default` voice when none is named


@pytest.mark.parametrize("fmt,ctype", [("flac", "audio/flac"), ("opus", "audio/ogg; codecs=opus"),
                                       ("mp3", "audio/mpeg")])
def test_speech_compressed_formats_decode(client, fmt, ctype):
    if fmt not in available_formats():
        pytest.skip(f"{fmt} encoding not available in this libsndfile")
    text = "One two three four five."
    r = speak(client, input=text, response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ctype
    data, sr = soundfile.read(io.BytesIO(r.content), dtype="float32")
    assert sr == SR
    assert abs(len(data) - expected_samples(text)) < 4000
    assert 0.3 < np.abs(data).max() < 0.7


def test_speech_pcm_is_raw_s16le(client):
    text = "Raw samples please."
    r = speak(client, input=text, response_format="pcm")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
    pcm = np.frombuffer(r.content, dtype="<i2")
    assert len(pcm) == expected_samples(text)
    np.testing.assert_allclose(pcm / 32767, chunk_audio(text, 0).numpy(), atol=1e-4)


def test_voice_as_object_and_instructions_ignored(client, fake):
    r = speak(client, input="An object voice.", voice={"id": "alice"}, instructions="cheerful",
              response_format="wav")
    assert r.status_code == 200, r.text
    assert fake.seen_kwargs[-1]["voice"] == "alice"


def test_speed_time_stretches_keeping_pitch(client):
    text = "one two three four five six seven eight nine ten"
    base = speak(client, input=text, response_format="pcm")
    fast = speak(client, input=text, response_format="pcm", speed=2.0)
    slow = speak(client, input=text, response_format="pcm", speed=0.5)
    n = len(base.content) // 2
    assert len(fast.content) // 2 == pytest.approx(n / 2, abs=2)
    assert len(slow.content) // 2 == pytest.approx(n * 2, abs=2)
    for r in (fast, slow):
        x = np.frombuffer(r.content, dtype="<i2").astype(np.float32)
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        peak = np.fft.rfftfreq(len(x), 1 / SR)[spectrum.argmax()]
        assert peak == pytest.approx(200.0, rel=0.03)  # same pitch, not resampled


def test_time_stretch_unit():
    t = torch.arange(SR) / SR
    x = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    assert time_stretch(x, 1.0) is x
    for speed in (0.25, 0.8, 1.5, 4.0):
        y = time_stretch(x, speed)
        assert y.shape[0] == round(SR / speed)
        assert torch.isfinite(y).all() and y.abs().max() <= 1
        spec = torch.fft.rfft(y * torch.hann_window(len(y)))
        assert float(torch.fft.rfftfreq(len(y), 1 / SR)[spec.abs().argmax()]) == pytest.approx(440, rel=0.02)
    assert time_stretch(torch.zeros(10), 2.0).shape[0] == 5  # shorter than one FFT frame


def test_stream_wav_has_open_length_header(client):
    text = "First sentence here. Second one. Third and last."
    with client.stream("POST", "/v1/audio/speech", json={"model": "hare-test", "voice": "alice", "input": text,
                                                         "response_format": "wav", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "audio/wav"
        assert r.headers["x-hare-chunks"] == "3"
        assert "content-length" not in r.headers  # uvicorn sends it chunked (checked on a live server below)
        body = r.read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    assert int.from_bytes(body[40:44], "little") == 0xFFFFFFFF - 36  # length unknown while streaming
    pcm = np.frombuffer(body[44:], dtype="<i2")
    assert len(pcm) == expected_samples(text)
    assert body[:40] == wav_header(SR)[:40]


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_stream_other_formats(client, fmt):
    text = "Alpha beta. Gamma delta."
    r = speak(client, input=text, response_format=fmt, stream=True)
    assert r.status_code == 200
    if fmt == "pcm":
        assert len(r.content) == 2 * expected_samples(text)
    else:
        data, sr = soundfile.read(io.BytesIO(r.content))  # concatenated MP3 pieces decode as one stream
        assert sr == SR and len(data) >= expected_samples(text) - 4000


def test_stream_sse_one_event_per_chunk(client):
    text = "Alpha beta. Gamma delta. Epsilon."
    r = speak(client, input=text, response_format="pcm", stream_format="sse")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.content)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) == 3 and events[-1]["type"] == "speech.audio.done" and events[-1]["chunks"] == 3
    pool = client.app.state.pool  # the worker counts the job right after it sent the last chunk
    assert wait_until(lambda: pool.stats()["completed"] == 1 and pool.stats()["running"] == 0)
    assert pool.stats()["cancelled"] == 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) == 2 * expected_samples(text)


def test_stream_error_after_first_chunk(library):
    class FailsLater(FakeTTS):
        def stream(self, text, **kwargs):
            for i, part in enumerate(super().stream(text, **kwargs)):
                if i == 1:
                    raise TextError("chunk 2 cannot be spoken")
                yield part

    with TestClient(create_app(FailsLater(library))) as c:
        r = c.post("/v1/audio/speech", json={"input": "Fine. Broken.", "voice": "alice", "response_format": "pcm",
                                             "stream_format": "sse"})
        assert r.status_code == 200
        events = sse_events(r.content)
        assert [e["type"] for e in events] == ["speech.audio.delta", "error"]
        assert events[1]["error"]["code"] == "invalid_input" and "chunk 2" in events[1]["error"]["message"]
        r = c.post("/v1/audio/speech", json={"input": "Fine. Broken.", "voice": "alice", "response_format": "pcm",
                                             "stream": True})
        assert r.status_code == 200 and len(r.content) == 2 * expected_samples("Fine.")  # cut short
        assert wait_until(lambda: c.app.state.pool.stats()["running"] == 0)


@pytest.mark.parametrize("body,status,code,param", [
    ({"input": ""}, 400, "empty_input", "input"),
    ({"input": "   \n "}, 400, "empty_input", "input"),
    ({"input": "x" * 201}, 400, "input_too_long", "input"),
    ({"input": "Hi.", "voice": "nobody"}, 400, "voice_not_found", "voice"),
    ({"input": "Hi.", "voice": "../../etc"}, 400, "voice_not_found", "voice"),
    ({"input": "Hi.", "voice": "/tmp"}, 400, "voice_not_found", "voice"),
    ({"input": "Hi.", "model": "gpt-9"}, 404, "model_not_found", "model"),
    ({"input": "Hi.", "response_format": "wma"}, 400, "unsupported_format", "response_format"),
    ({"input": "Hi.", "response_format": "flac", "stream": True}, 400, "unsupported_format", "response_format"),
    ({"input": "Hi.", "speed": 5}, 400, "invalid_speed", "speed"),
    ({"input": "Hi.", "speed": 0.1}, 400, "invalid_speed", "speed"),
    ({"input": "Hi.", "preset": "ludicrous"}, 400, "invalid_preset", "preset"),
    ({"input": "Hi.", "stream_format": "websocket"}, 400, "invalid_stream_format", "stream_format"),
    ({"input": "Hi.", "seed": -1}, 400, "invalid_request", "seed"),
    ({"input": 42}, 400, "invalid_request", "input"),
    ({"voice": "alice"}, 400, "invalid_request", "input"),
    ({"input": "?!...", "voice": "alice"}, 400, "invalid_input", "input"),  # TextError from the pipeline
])
def test_speech_errors(client, body, status, code, param):
    assert_error(client.post("/v1/audio/speech", json={"voice": "alice", **body}), status, code, param)


def test_speech_error_before_stream_is_json(client):
    r = speak(client, input="?!", response_format="wav", stream=True)
    assert_error(r, 400, "invalid_input", "input")


def test_speech_bad_bodies(client):
    r = client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request")
    r = client.post("/v1/audio/speech", content=b"x" * ((1 << 20) + 1), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"input": "'
        for _ in range(30):
            yield b"x" * 50_000
        yield b'"}'

    r = client.post("/v1/audio/speech", content=chunked(), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")
    r = client.post("/v1/audio/speech", content=b"input=hi", headers={"content-type": "text/plain"})
    assert_error(r, 400, "invalid_request")
    assert_error(client.get("/v1/audio/speech"), 405)
    assert_error(client.get("/v1/nothing"), 404, "not_found")


def test_checkpoint_error_is_server_error_and_unexpected_is_500(library):
    from hare.errors import CheckpointError

    class Broken(FakeTTS):
        def stream(self, text, **kwargs):
            if "boom" in text:
                raise RuntimeError("boom")
            raise CheckpointError("diffusion weights are corrupt")
            yield  # pragma: no cover

    with TestClient(create_app(Broken(library)), raise_server_exceptions=False) as c:
        err = assert_error(c.post("/v1/audio/speech", json={"input": "Hi.", "voice": "alice"}), 500,
                           "checkpoint_error")
        assert err["type"] == "server_error"
        assert_error(c.post("/v1/audio/speech", json={"input": "boom", "voice": "alice"}), 500, "internal_error")


def test_server_overrides_reach_the_pipeline(library):
    fake = FakeTTS(library)
    with TestClient(create_app(fake, overrides={"num_candidates": 3}, default_preset="ultra_fast")) as c:
        assert speak(c, input="Hi.", model=None, response_format="wav").status_code == 200
    assert fake.seen_kwargs[-1] == {"voice": "alice", "preset": "ultra_fast", "seed": 1234, "num_candidates": 3}


# ---------------------------------------------------------------------------------------------------------------
# Models, voices, health, page


def test_models(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    data = r.json()["data"]
    assert [m["id"] for m in data] == ["hare-test", "tts-1", "tts-1-hd"]
    main = data[0]
    assert main["object"] == "model" and main["owned_by"] == "hare"
    assert "ultra_fast" in main["presets"] and {"wav", "pcm", "mp3"} <= set(main["response_formats"])
    assert main["default_voice"] == "default"
    assert client.get("/v1/models/tts-1").json()["root"] == "hare-test"
    assert_error(client.get("/v1/models/whisper-1"), 404, "model_not_found")


def test_voices_list(client):
    r = client.get("/v1/voices")
    assert r.status_code == 200
    body = r.json()
    voices = {v["id"]: v for v in body["data"]}
    assert set(voices) == {"alice", "default"} and body["default"] == "default"
    assert voices["alice"]["clips"] == 1 and voices["alice"]["deletable"] is True
    assert voices["default"]["deletable"] is False


def upload(client, name, files, **fields):
    return client.post("/v1/voices", data={"name": name, **fields}, files=[("files", f) for f in files])


def test_voice_upload_use_and_delete(client, tmp_path, fake):
    clips = [write_clip(tmp_path / "c1.wav"), write_clip(tmp_path / "c2.flac", freq=300)]
    r = upload(client, "bob", [("c1.wav", clips[0].read_bytes(), "audio/wav"),
                               ("c2.flac", clips[1].read_bytes(), "audio/flac")])
    assert r.status_code == 201, r.text
    assert r.json() == {"id": "bob", "object": "voice", "name": "bob", "clips": 2, "deletable": True}
    assert "bob" in [v["id"] for v in client.get("/v1/voices").json()["data"]]
    stored = sorted(p.name for p in (Path(fake.voices.user_folder) / "bob").iterdir())
    assert stored == ["00_clip0.wav", "01_clip1.flac"]  # the client's file names are never used as paths
    assert speak(client, input="Now as bob.", voice="bob", response_format="wav").status_code == 200

    assert_error(upload(client, "bob", [("c1.wav", clips[0].read_bytes(), "audio/wav")]), 409, "voice_exists")
    r = upload(client, "bob", [("c1.wav", clips[0].read_bytes(), "audio/wav")], overwrite="true")
    assert r.status_code == 201 and r.json()["clips"] == 1

    r = client.delete("/v1/voices/bob")
    assert r.status_code == 200 and r.json() == {"id": "bob", "object": "voice.deleted", "deleted": True}
    assert "bob" not in [v["id"] for v in client.get("/v1/voices").json()["data"]]
    assert_error(speak(client, input="Gone.", voice="bob"), 400, "voice_not_found")


def test_voice_upload_errors(client, tmp_path):
    good = write_clip(tmp_path / "g.wav").read_bytes()
    silent = io.BytesIO()
    soundfile.write(silent, np.zeros(44100, dtype=np.float32), 22050, format="WAV")
    short = io.BytesIO()
    soundfile.write(short, 0.3 * np.ones(2000, dtype=np.float32), 22050, format="WAV")
    cases = [
        (upload(client, "../evil", [("g.wav", good, "audio/wav")]), 400, "invalid_voice_name"),
        (upload(client, "a/b", [("g.wav", good, "audio/wav")]), 400, "invalid_voice_name"),
        (upload(client, "random", [("g.wav", good, "audio/wav")]), 400, "invalid_voice_name"),
        (client.post("/v1/voices", data={"name": "x"}, files=[("other", ("", b"", "text/plain"))]), 400, None),
        (client.post("/v1/voices", data={"name": "nofiles"}, files={"dummy": ("", b"")}), 400, None),
        (upload(client, "", [("g.wav", good, "audio/wav")]), 400, "invalid_voice_name"),
        (upload(client, "txt", [("notes.txt", b"hello world", "text/plain")]), 415, "unsupported_media_type"),
        (upload(client, "fake", [("fake.wav", b"this is not audio at all" * 100, "audio/wav")]), 400,
         "invalid_audio"),
        (upload(client, "quiet", [("s.wav", silent.getvalue(), "audio/wav")]), 400, "invalid_audio"),
        (upload(client, "short", [("s.wav", short.getvalue(), "audio/wav")]), 400, "invalid_audio"),
        (upload(client, "huge", [("big.wav", b"\0" * 500_000, "audio/wav")]), 413, "request_too_large"),
        (client.post("/v1/voices", json={"name": "json"}), 415, "unsupported_media_type"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    names = [v["id"] for v in client.get("/v1/voices").json()["data"]]
    assert names == ["alice", "default"]  # nothing half-written


def test_voice_upload_too_many_parts_and_chunked_body_limit(client, tmp_path):
    good = write_clip(tmp_path / "g.wav", seconds=0.6).read_bytes()
    r = upload(client, "many", [(f"g{i}.wav", good, "audio/wav") for i in range(17)])
    assert_error(r, 400, "invalid_upload")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"\0" * 50_000

    r = client.post("/v1/voices", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 413, "request_too_large")


def test_voice_delete_errors(client):
    assert_error(client.delete("/v1/voices/nobody"), 404, "voice_not_found")
    assert_error(client.delete("/v1/voices/default"), 403, "voice_not_deletable")
    for bad in ("a..b", ".hidden", "x%2F..%2F..%2Fetc", "%2e%2e", "a%00b", "a%20b"):
        assert_error(client.delete(f"/v1/voices/{bad}"), 400, "invalid_voice_name")
    for normalised in ("..", "../../etc/passwd"):  # the client resolves the dots: no voice route is reached
        assert_error(client.delete(f"/v1/voices/{normalised}"), 404, "not_found")
    assert (Path(client.app.state.tts.voices.folders[0]) / "alice").is_dir()


def test_health_and_page(client):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["model"] == "hare-test" and h["workers"] == 1 and h["queued"] == 0
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="text"', 'id="voice"', 'id="preset"', 'id="speak"', 'id="player"', 'id="download"',
                    'id="progress"', 'id="voice-files"'):
        assert element in page.text
    js = client.get("/web/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/v1/audio/speech" in js.text
    assert client.get("/web/style.css").headers["content-type"].startswith("text/css")
    assert_error(client.get("/web/server.py"), 404)
    assert "/v1/audio/speech" in client.get("/openapi.json").json()["paths"]
    assert_error(client.get("/web/../server.py"), 404)


def test_api_key_on_every_route_but_health(fake, monkeypatch):
    app = create_app(fake, api_key="s3cret")
    routes = [("GET", "/"), ("GET", "/web/app.js"), ("GET", "/v1/models"), ("GET", "/v1/models/tts-1"),
              ("GET", "/v1/voices"), ("POST", "/v1/voices"), ("DELETE", "/v1/voices/alice"),
              ("POST", "/v1/audio/speech"), ("GET", "/docs"), ("GET", "/openapi.json")]
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = c.request(method, path, headers=headers)
                err = assert_error(r, 401, "invalid_api_key")
                assert err["type"] == "authentication_error"
                assert r.headers["www-authenticate"].startswith("Bearer" if path.startswith("/v1/") else "Basic")
        ok = {"input": "Hi.", "voice": "alice", "response_format": "wav"}
        assert c.post("/v1/audio/speech", json=ok, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert c.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# `hare serve`


def test_cli_serve_options_and_errors(monkeypatch, tmp_path, capsys):
    from hare import cli

    captured = {}

    def fake_serve(tts, **options):
        captured.update(options, tts=tts)

    monkeypatch.setattr("hare.server.serve", fake_serve)
    monkeypatch.setattr("hare.load_model", lambda *a, **k: captured.setdefault("load", (a, k)) and FakeTTS(
        VoiceLibrary([tmp_path])))
    monkeypatch.setenv("HARE_API_KEY", "from-env")
    code = cli.main(["serve", "--port", "8123", "--model", "tortoise-v2", "--workers", "2", "--max-queue", "3",
                     "--candidates", "4", "--max-upload-mb", "2"])
    assert code == 0
    assert captured["port"] == 8123 and captured["host"] == "127.0.0.1" and captured["api_key"] == "from-env"
    assert captured["workers"] == 2 and captured["max_queue"] == 3 and captured["model_name"] == "tortoise-v2"
    assert captured["overrides"] == {"num_candidates": 4} and captured["max_upload_bytes"] == 2 * 2**20
    assert captured["load"][0] == ("tortoise-v2",)

    monkeypatch.undo()
    code = cli.main(["serve", "--model", "no-such-model", "--port", "8124"])
    assert code == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--workers", "0"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------------------------
# A real server on loopback: concurrency, overload, disconnects, streaming, the openai client


def live_server(app):
    return running_server(app, log_level="warning", start_timeout=20, stop_timeout=10)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_overload_503_retry_after_and_responsive_loop(library):
    gate = threading.Event()
    fake = FakeTTS(library, gate=gate)
    app = create_app(fake, workers=1, max_queue=1)
    pool = app.state.pool
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        results = {}

        def call(key):
            results[key] = http.post("/v1/audio/speech", json={"input": f"Request {key}.", "voice": "alice",
                                                              "response_format": "wav"})

        threads = [threading.Thread(target=call, args=(k,)) for k in ("a", "b")]
        threads[0].start()
        assert wait_until(lambda: pool.stats()["running"] == 1)
        threads[1].start()
        assert wait_until(lambda: pool.stats()["queued"] == 1)
        t0 = time.perf_counter()
        health = http.get("/health")  # the event loop answers while the worker is busy
        assert health.status_code == 200 and time.perf_counter() - t0 < 2.0
        assert health.json()["running"] == 1 and health.json()["queued"] == 1
        busy = http.post("/v1/audio/speech", json={"input": "One too many.", "voice": "alice"})
        err = assert_error(busy, 503, "server_busy")
        assert err["type"] == "server_error" and int(busy.headers["retry-after"]) >= 1
        gate.set()
        for t in threads:
            t.join(30)
        assert results["a"].status_code == 200 and results["b"].status_code == 200
        assert pool.stats()["rejected"] == 1 and pool.stats()["completed"] == 2


def test_disconnect_cancels_queued_job(library):
    gate = threading.Event()
    fake = FakeTTS(library, gate=gate)
    app = create_app(fake, workers=1, max_queue=4)
    pool = app.state.pool
    with live_server(app) as url:
        first = threading.Thread(target=lambda: httpx.post(url + "/v1/audio/speech", timeout=30, json={
            "input": "Keeps the worker busy.", "voice": "alice", "response_format": "wav"}))
        first.start()
        assert wait_until(lambda: pool.stats()["running"] == 1)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its job waits in the queue
            httpx.post(url + "/v1/audio/speech", timeout=0.5, json={"input": "Never spoken.", "voice": "alice"})
        assert wait_until(lambda: pool.stats()["queued"] == 0), pool.stats()
        assert pool.stats()["cancelled"] == 1
        gate.set()
        first.join(30)
        assert wait_until(lambda: pool.stats()["running"] == 0)
    assert [t for t, _ in fake.log] == ["Keeps the worker busy."]  # the abandoned job never ran


def test_disconnect_stops_running_job_after_its_chunk(library):
    fake = FakeTTS(library, delay=0.3)
    app = create_app(fake, workers=1, max_queue=2)
    pool = app.state.pool
    text = " ".join(f"Part {i}." for i in range(10))
    with live_server(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/audio/speech", timeout=0.5, json={"input": text, "voice": "alice"})
        assert wait_until(lambda: pool.stats()["running"] == 0, timeout=5)
        produced = len(fake.log)
        time.sleep(0.6)
        assert len(fake.log) == produced < 10 and pool.stats()["cancelled"] == 1


def test_stream_is_incremental_and_disconnect_stops_it(library):
    fake = FakeTTS(library, delay=0.4)
    app = create_app(fake, workers=1, max_queue=2)
    pool = app.state.pool
    text = " ".join(f"Sentence number {i}." for i in range(12))
    with live_server(app) as url:
        t0 = time.perf_counter()
        with httpx.stream("POST", url + "/v1/audio/speech", timeout=30,
                          json={"input": text, "voice": "alice", "response_format": "pcm", "stream": True}) as r:
            assert r.status_code == 200 and r.headers["x-hare-chunks"] == "12"
            assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers
            first = next(r.iter_raw())
            first_s = time.perf_counter() - t0
        # the first chunk arrived long before the 12 chunks (4.8 s) could be done, and closing stopped the job
        assert len(first) > 0 and first_s < 3.0
        assert wait_until(lambda: pool.stats()["running"] == 0, timeout=5)
        produced = len(fake.log)
        time.sleep(0.9)
        assert len(fake.log) == produced < 12 and pool.stats()["cancelled"] == 1
        # the server is still healthy and serves the next request
        r = httpx.post(url + "/v1/audio/speech", timeout=30,
                       json={"input": "After.", "voice": "alice", "response_format": "wav"})
        assert r.status_code == 200


def test_openai_client(library):
    openai = pytest.importorskip("openai")
    fake = FakeTTS(library)
    with live_server(create_app(fake, model_name="hare-test", api_key="k-123")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0)
        text = "The official client works. Two sentences."
        speech = client.audio.speech.create(model="tts-1", voice="alice", input=text, response_format="wav")
        data, sr = soundfile.read(io.BytesIO(speech.content))
        assert sr == SR and len(data) == expected_samples(text)
        speech = client.audio.speech.create(model="hare-test", voice="alice", input=text)  # mp3 by default
        assert speech.response.headers["content-type"] == "audio/mpeg" and len(speech.content) > 1000
        with client.audio.speech.with_streaming_response.create(
                model="hare-test", voice="alice", input=text, response_format="pcm",
                extra_body={"stream": True, "seed": 3}) as streamed:
            assert streamed.headers["x-hare-seed"] == "3"
            pcm = b"".join(streamed.iter_bytes())
        assert len(pcm) == 2 * expected_samples(text)
        assert [m.id for m in client.models.list()] == ["hare-test", "tts-1", "tts-1-hd"]
        with pytest.raises(openai.NotFoundError):
            client.audio.speech.create(model="gpt-4o-mini-tts", voice="alice", input="Hi.")
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
        assert "unknown voice" in exc.value.message
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.audio.speech.create(model="tts-1", voice="alice", input="Hi.")


# ---------------------------------------------------------------------------------------------------------------
# The real pipeline on tiny random models


def test_real_pipeline_tiny_models(tmp_path, monkeypatch):
    from tiny_models import tiny_tts, write_voice

    monkeypatch.setenv("HARE_HOME", str(tmp_path / "home"))
    write_voice(tmp_path / "voices" / "tone")
    tts = tiny_tts(tmp_path / "voices")
    app = create_app(tts, model_name="tiny", default_preset="ultra_fast",
                     overrides={"num_candidates": 2, "diffusion_steps": 3, "max_codes": 20})
    with TestClient(app) as c:
        r = c.post("/v1/audio/speech", json={"model": "tiny", "input": "Hello world. Second chunk here.",
                                             "voice": "tone", "response_format": "wav", "seed": 5})
        assert r.status_code == 200, r.text
        data, sr = soundfile.read(io.BytesIO(r.content))
        assert sr == SR and len(data) > 0 and np.isfinite(data).all()
        again = c.post("/v1/audio/speech", json={"model": "tiny", "input": "Hello world. Second chunk here.",
                                                 "voice": "tone", "response_format": "wav", "seed": 5})
        assert again.content == r.content  # same seed, same audio
        r = c.post("/v1/audio/speech", json={"input": "Streamed. In pieces.", "voice": "tone",
                                             "response_format": "pcm", "stream_format": "sse", "seed": 5})
        assert r.status_code == 200 and r.headers["x-hare-seed"] == "5"
        assert_error(c.post("/v1/audio/speech", json={"input": "Hi.", "voice": "missing"}), 400, "voice_not_found")


def test_openai_voice_names_fall_back_to_the_default_voice(client, fake, library, tmp_path):
    """Unmodified OpenAI clients send `alloy`, `nova`...: without such a voice in the library, the default."""
    assert speak(client, input="Hello.", voice="alloy").status_code == 200
    assert speak(client, input="Hello.", voice="Nova").status_code == 200
    assert [k["voice"] for k in fake.seen_kwargs] == ["default", "default"]
    (tmp_path / "voices" / "echo").mkdir()
    write_clip(tmp_path / "voices" / "echo" / "e.wav")
    assert speak(client, input="Hello.", voice="echo").status_code == 200  # a real voice of that name wins
    assert fake.seen_kwargs[-1]["voice"] == "echo"


def test_hifigan_stream_sends_audio_before_the_last_code(tmp_path, monkeypatch):
    """decoder "hifigan" with stream: the first PCM bytes reach the client while the GPT is still sampling
    (the GPT waits at a later code until the client has them), and the whole stream is the one-shot audio."""
    from tiny_models import tiny_models, tiny_tts, write_voice

    monkeypatch.setenv("HARE_HOME", str(tmp_path / "home"))
    write_voice(tmp_path / "voices" / "tone")
    models = tiny_models()
    with torch.no_grad():
        models["autoregressive"].mel_head.bias[8193] -= 6.0  # a talker: it runs to max_codes
    tts = tiny_tts(tmp_path / "voices", models=models)
    body = {"input": "Hello there.", "voice": "tone", "response_format": "pcm", "seed": 2, "decoder": "hifigan"}
    app = create_app(tts, overrides={"max_codes": 40, "stream_first_codes": 2, "stream_every_codes": 2})
    got_first, held = threading.Event(), []
    real_step = tts.gpt.decode_step

    def gated_step(codes, position, cache, **kw):
        if position == 30:  # ten codes before the end: wait for the client to hold audio
            held.append(got_first.wait(20))
        return real_step(codes, position, cache, **kw)

    with live_server(app) as url:
        one_shot = httpx.post(url + "/v1/audio/speech", timeout=60, json=body)
        assert one_shot.status_code == 200, one_shot.text
        tts.gpt.decode_step = gated_step
        try:
            pcm = b""
            with httpx.stream("POST", url + "/v1/audio/speech", timeout=60, json={**body, "stream": True}) as r:
                assert r.status_code == 200
                for piece in r.iter_raw():
                    pcm += piece
                    got_first.set()
        finally:
            del tts.gpt.decode_step
        assert held == [True]  # the GPT had not sampled its last codes when the first audio arrived
        a = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        b = np.frombuffer(one_shot.content, dtype="<i2").astype(np.float32)
        assert len(a) == len(b) and np.abs(a - b).max() <= 8  # 16-bit PCM, float rounding of two paths
        assert_error(httpx.post(url + "/v1/audio/speech", timeout=30, json={**body, "decoder": "x"}), 400,
                     "invalid_decoder")
