// Hare's web page: plain JavaScript against the server's own API (no build step).
// WAV output is streamed as server-sent events of PCM (one event per text chunk, or, with the HiFi-GAN
// decoder, per few codes), played as it arrives (Web Audio) and kept for the player and download at the end;
// other formats are fetched whole.
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLE_RATE = 24000;
// absolute URLs without user:password@ (a page opened with credentials in its URL cannot fetch relative ones;
// the browser still sends the Basic credentials it was given for this origin)
const api = (path) => window.location.origin + path;
let lastUrl = null;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (e) { /* not JSON */ }
  if (response.status === 503) {
    const retry = response.headers.get("Retry-After");
    message = `The server is busy${retry ? `; try again in ${retry} s` : ""}. (${message})`;
  }
  return new Error(message);
}

async function loadModel() {
  const response = await fetch(api("/v1/models"));
  if (!response.ok) throw await apiError(response);
  const model = (await response.json()).data[0];
  $("model").textContent = `model ${model.id}`;
  $("model").dataset.id = model.id;
  const preset = $("preset");
  preset.innerHTML = "";
  const presets = model.presets || [];
  if (!model.default_preset) preset.add(new Option("server default", ""));
  for (const name of presets) preset.add(new Option(name.replace(/_/g, " "), name));
  if (model.default_preset) preset.value = model.default_preset;
  const format = $("format");
  format.innerHTML = "";
  for (const name of model.response_formats || ["wav"]) {
    if (name === "pcm") continue;
    format.add(new Option(name === "wav" ? "wav (streamed)" : name, name));
  }
  format.value = "wav";
}

async function loadVoices(select) {
  const response = await fetch(api("/v1/voices"));
  if (!response.ok) throw await apiError(response);
  const body = await response.json();
  const voice = $("voice");
  const previous = select || voice.value || body.default;
  voice.innerHTML = "";
  for (const v of body.data) voice.add(new Option(v.clips ? `${v.name} (${v.clips} clips)` : v.name, v.id));
  voice.add(new Option("random (drawn by the model)", "random"));
  voice.value = [...voice.options].some((o) => o.value === previous) ? previous : voice.options[0].value;
}

function wavBlob(pcmParts) {
  const bytes = pcmParts.reduce((n, p) => n + p.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) header.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); header.setUint32(4, 36 + bytes, true); text(8, "WAVE");
  text(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, SAMPLE_RATE, true); header.setUint32(28, SAMPLE_RATE * 2, true);
  header.setUint16(32, 2, true); header.setUint16(34, 16, true);
  text(36, "data"); header.setUint32(40, bytes, true);
  return new Blob([header.buffer, ...pcmParts], { type: "audio/wav" });
}

function base64Bytes(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function request() {
  const body = {
    model: $("model").dataset.id || undefined,
    input: $("text").value,
    voice: $("voice").value,
    speed: parseFloat($("speed").value) || 1,
  };
  if ($("preset").value) body.preset = $("preset").value;
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  if ($("decoder").value) body.decoder = $("decoder").value;
  return body;
}

// Plays 16-bit PCM pieces back to back as they arrive (a no-op where Web Audio is missing).
function livePlayer() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return { push() {}, live: false };
  let context;
  try { context = new Context(); } catch (e) { return { push() {}, live: false }; }
  let next = 0;
  return {
    live: context.state !== "suspended",  // a suspended context (no user gesture) plays nothing
    push(bytes) {
      const n = bytes.length >> 1;
      if (!n) return;
      const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
      const buffer = context.createBuffer(1, n, SAMPLE_RATE);
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
      const source = context.createBufferSource();
      source.buffer = buffer;
      source.connect(context.destination);
      next = Math.max(next, context.currentTime + 0.05);
      source.start(next);
      next += buffer.duration;
    },
  };
}

async function speakStreamed(body, progress) {
  const player = livePlayer();  // made inside the click, as browsers ask
  const response = await fetch(api("/v1/audio/speech"), {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, response_format: "pcm", stream_format: "sse" }),
  });
  if (!response.ok) throw await apiError(response);
  const total = parseInt(response.headers.get("X-Hare-Chunks") || "0", 10);
  const seed = response.headers.get("X-Hare-Seed");
  const parts = [];
  let seconds = 0;
  progress(0, total, 0);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const line = event.split("\n").find((l) => l.startsWith("data: "));
      if (!line) continue;
      const data = JSON.parse(line.slice(6));
      if (data.type === "speech.audio.delta") {
        const bytes = base64Bytes(data.audio);
        if (bytes.length) {
          parts.push(bytes);
          player.push(bytes);
          seconds += bytes.length / 2 / SAMPLE_RATE;
          progress(parts.length, total, seconds);
        }
      }
    }
  }
  if (!parts.length) throw new Error("the server sent no audio");
  return { blob: wavBlob(parts), seconds, seed, extension: "wav", played: player.live };
}

async function speakWhole(body, format) {
  const response = await fetch(api("/v1/audio/speech"), {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, response_format: format }),
  });
  if (!response.ok) throw await apiError(response);
  const blob = await response.blob();
  return { blob, seed: response.headers.get("X-Hare-Seed"), extension: format === "opus" ? "ogg" : format };
}

async function speak() {
  showError("");
  const body = request();
  if (!body.input.trim()) { showError("Type some text first."); return; }
  const button = $("speak");
  const bar = $("progress");
  button.disabled = true;
  bar.hidden = false;
  bar.removeAttribute("value");
  const started = performance.now();
  let note = "waiting for the server…";
  const tick = () => setStatus(`${note} ${((performance.now() - started) / 1000).toFixed(1)} s`);
  const timer = setInterval(tick, 200);
  tick();
  try {
    const format = $("format").value || "wav";
    const result = format === "wav"
      ? await speakStreamed(body, (done, total, seconds) => {
        if (total) { bar.max = total; bar.value = done; }
        note = total ? `chunk ${done} of ${total} (${seconds.toFixed(1)} s of audio)` : `${seconds.toFixed(1)} s of audio`;
      })
      : await speakWhole(body, format);
    if (lastUrl) URL.revokeObjectURL(lastUrl);
    lastUrl = URL.createObjectURL(result.blob);
    const player = $("player");
    player.src = lastUrl;
    const link = $("download");
    link.href = lastUrl;
    link.download = `hare${result.seed ? "-" + result.seed : ""}.${result.extension}`;
    $("result").hidden = false;
    bar.max = 1; bar.value = 1;
    clearInterval(timer);
    setStatus(`done in ${((performance.now() - started) / 1000).toFixed(1)} s` + (result.seed ? `, seed ${result.seed}` : ""));
    // streamed audio has played as it arrived; the player holds it for replay and download
    if (!result.played) player.play().catch(() => { /* autoplay may be blocked; the controls are there */ });
  } catch (e) {
    clearInterval(timer);
    setStatus("");
    bar.hidden = true;
    showError(e.message || String(e));
  } finally {
    button.disabled = false;
  }
}

async function upload() {
  showError("");
  const name = $("voice-name").value.trim();
  const files = $("voice-files").files;
  if (!name) { showError("Give the voice a name."); return; }
  if (!files.length) { showError("Choose at least one audio clip."); return; }
  const form = new FormData();
  form.append("name", name);
  for (const f of files) form.append("files", f, f.name);
  const button = $("upload");
  button.disabled = true;
  setStatus("uploading…");
  try {
    const response = await fetch(api("/v1/voices"), { method: "POST", body: form });
    if (!response.ok) throw await apiError(response);
    await loadVoices(name);
    setStatus(`voice ${name} added`);
    $("add-voice").open = false;
  } catch (e) {
    setStatus("");
    showError(e.message || String(e));
  } finally {
    button.disabled = false;
  }
}

async function init() {
  $("text").addEventListener("input", () => { $("count").textContent = $("text").value.length; });
  $("speak").addEventListener("click", speak);
  $("upload").addEventListener("click", upload);
  try {
    await Promise.all([loadModel(), loadVoices()]);
    document.body.dataset.ready = "1";
  } catch (e) {
    showError(`Cannot reach the server: ${e.message || e}`);
  }
}

init();
