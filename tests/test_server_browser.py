"""The web page in headless Chromium, driven over the DevTools protocol (a small client over websocket-client):
type text, click Speak, and check that playable audio came back; upload a voice from a file and use it.

Needs Debian's Chromium (`apt-get install -y chromium`; CI installs it). Skips with the reason when it is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
websocket = pytest.importorskip("websocket", reason="websocket-client is not installed (pip install websocket-client)")

from hare.server import create_app  # noqa: E402

from test_server import FakeTTS, expected_samples, library, live_server, write_clip  # noqa: E402,F401

SR = 24000


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium page, driven over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path):
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--mute-audio", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self.console: list[str] = []
        self.send("Runtime.enable")
        self.send("Page.enable")

    def send(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}; console: {self.console}")

    def click(self, selector: str) -> None:
        box = self.js(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                      f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({selector!r}).focus()")
        self.send("Input.insertText", text=text)

    def set_files(self, selector: str, paths: list[str]) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=paths)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def browser(tmp_path):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); the web-page test needs it")
    profile = Path(tempfile.mkdtemp(prefix="hare-chromium-"))
    b = Browser(binary, profile)
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


PLAYABLE = """(async () => {
  const player = document.getElementById('player');
  if (player.readyState < 1) {
    await new Promise((resolve, reject) => {
      player.addEventListener('loadedmetadata', resolve, { once: true });
      player.addEventListener('error', () => reject(new Error('media error ' + (player.error && player.error.code))),
                              { once: true });
    });
  }
  const bytes = await (await fetch(player.src)).arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 24000, 24000).decodeAudioData(bytes);
  const samples = decoded.getChannelData(0);
  let peak = 0;
  for (const s of samples) peak = Math.max(peak, Math.abs(s));
  const bar = document.getElementById('progress');
  return { duration: player.duration, decoded: decoded.duration, peak, progress: bar.value / bar.max,
           status: document.getElementById('status').textContent, error: document.getElementById('error').hidden,
           download: document.getElementById('download').download,
           href: document.getElementById('download').href };
})()"""


def test_page_types_clicks_and_plays(browser, library, tmp_path):
    fake = FakeTTS(library, delay=0.05)
    with live_server(create_app(fake, model_name="hare-test")) as url:
        browser.send("Page.navigate", url=url + "/")
        browser.wait("document.body && document.body.dataset.ready === '1'")
        voices = browser.js("[...document.getElementById('voice').options].map(o => o.value)")
        assert voices[:2] == ["alice", "default"] and voices[-1] == "random"
        assert browser.js("document.getElementById('voice').value") == "default"
        presets = browser.js("[...document.getElementById('preset').options].map(o => o.value)")
        assert "ultra_fast" in presets

        # an empty text is refused on the page itself
        browser.click("#speak")
        assert "Type some text" in browser.wait("!document.getElementById('error').hidden && "
                                                "document.getElementById('error').textContent")

        text = "Hello from the browser. This is the second sentence. And a third."
        browser.type("#text", text)
        assert browser.js("document.getElementById('count').textContent") == str(len(text))
        browser.js("document.getElementById('preset').value = 'ultra_fast'")
        browser.js("document.getElementById('seed').value = '42'")
        browser.click("#speak")
        browser.wait("!document.getElementById('result').hidden", timeout=30)
        result = browser.js(PLAYABLE)
        assert result["error"] is True  # the error box is hidden again
        assert result["decoded"] == pytest.approx(expected_samples(text) / SR, abs=0.01)
        assert result["duration"] == pytest.approx(expected_samples(text) / SR, abs=0.01)
        assert 0.4 < result["peak"] < 0.6
        assert result["progress"] == 1 and result["status"].startswith("done") and "seed 42" in result["status"]
        assert result["download"] == "hare-42.wav" and result["href"].startswith("blob:")
        assert fake.seen_kwargs[-1] == {"voice": "default", "preset": "ultra_fast", "seed": 42}
        browser.screenshot(Path(os.environ.get("HARE_SCREENSHOT", tmp_path / "page.png")))

        # a whole (not streamed) compressed file plays too
        browser.js("document.getElementById('format').value = 'flac'")
        browser.js("document.getElementById('result').hidden = true")
        browser.click("#speak")
        browser.wait("!document.getElementById('result').hidden", timeout=30)
        result = browser.js(PLAYABLE)
        assert result["decoded"] == pytest.approx(expected_samples(text) / SR, abs=0.01)
        assert result["download"] == "hare-42.flac"


def test_page_uploads_a_voice_and_reports_errors(browser, library, tmp_path):
    fake = FakeTTS(library)
    clip = write_clip(tmp_path / "my clip.wav", seconds=1.5)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not audio" * 50)
    with live_server(create_app(fake, model_name="hare-test")) as url:
        browser.send("Page.navigate", url=url + "/")
        browser.wait("document.body && document.body.dataset.ready === '1'")
        browser.js("document.getElementById('add-voice').open = true")

        browser.type("#voice-name", "carol")
        browser.set_files("#voice-files", [str(junk)])
        browser.click("#upload")
        message = browser.wait("!document.getElementById('error').hidden && "
                               "document.getElementById('error').textContent")
        assert "not usable audio" in message

        browser.set_files("#voice-files", [str(clip)])
        browser.click("#upload")
        browser.wait("document.getElementById('voice').value === 'carol'")
        assert (Path(library.user_folder) / "carol").is_dir()

        browser.type("#text", "Now in my own voice.")
        browser.click("#speak")
        browser.wait("!document.getElementById('result').hidden", timeout=30)
        assert browser.js(PLAYABLE)["decoded"] > 0
        assert fake.seen_kwargs[-1]["voice"] == "carol"

        # a server error (here: the voice was deleted behind the page's back) shows on the page
        library.remove("carol")
        browser.click("#speak")
        message = browser.wait("!document.getElementById('error').hidden && "
                               "document.getElementById('error').textContent")
        assert "unknown voice" in message


def test_page_behind_an_api_key(browser, library):
    """With --api-key the page is opened as http://user:KEY@host/ and the browser's Basic credentials carry the
    key on every request the page makes."""
    fake = FakeTTS(library)
    with live_server(create_app(fake, model_name="hare-test", api_key="k-789")) as url:
        browser.send("Page.navigate", url=url.replace("http://", "http://me:k-789@") + "/")
        browser.wait("document.body && document.body.dataset.ready === '1'")
        browser.type("#text", "Behind a key.")
        browser.click("#speak")
        browser.wait("!document.getElementById('result').hidden", timeout=30)
        assert browser.js(PLAYABLE)["decoded"] == pytest.approx(expected_samples("Behind a key.") / SR, abs=0.01)
