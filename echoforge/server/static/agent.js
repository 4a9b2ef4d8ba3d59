// EchoForge voice agent page: mic → WS /api/agent (PCM s16le) → events + PCM audio back.
// Echo cancellation is on in getUserMedia; playback is scheduled with Web Audio and stopped at once
// when the server reports an interruption (barge-in, the Interrupt button, pause).
// While the server loads the agent models (first session: ~30 s) the page says "Loading models…" and
// only Cancel works, until the server's `ready` event. A socket the server drops (it died, restarted)
// is said ("Connection to the server lost") with a Reconnect button. Theme toggle and engine badge
// are the studio's (dom.js).

import { api, session } from "./api.js";
import { PcmPlayer } from "./audio.js";
import { $, h, initTheme, renderEngineBadge, renderOfflineBadge, store } from "./dom.js";

const SLIDERS = [["warmth", "Warmth"], ["energy", "Energy"], ["humor", "Humor"], ["formality", "Formality"]];

const ui = { start: $("#start"), stop: $("#stop"), interrupt: $("#interrupt"), pause: $("#pause"), state: $("#state"),
  meter: $("#meter > div"), log: $("#log"), draft: $("#draft"), latency: $("#latency"), voice: $("#voice"), sliders: $("#sliders"),
  lost: $("#lost"), lostText: $("#lost-text"), reconnect: $("#reconnect"), badge: $("#engine-badge") };
session.apiKey = store.get("apiKey", "");
const HEALTH_EVERY_MS = Number(new URLSearchParams(location.search).get("health_ms")) || 5000;

let ws = null, ctx = null, micStream = null, worklet = null, analyser = null;
let outRate = 24000, player = null, paused = false, turn = 0; // player: the reply audio, on the mic's AudioContext

function apiKey() {
  if (session.apiKey) return session.apiKey;
  const v = localStorage.getItem("apiKey"); // older pages stored it unprefixed
  if (v) { try { return JSON.parse(v); } catch { return v; } }
  return "";
}

function stamp() { return new Date().toLocaleTimeString(); }

// Who said it, in words (not only the border colour).
const SPEAKER = { user: "You:", agent: "Agent:" };

function addLog(text, cls = "meta") {
  const li = document.createElement("li");
  li.className = cls;
  const t = document.createElement("time");
  t.textContent = stamp();
  li.append(t);
  const who = SPEAKER[cls.split(" ")[0]];
  if (who) li.append(h("strong", { class: "who" }, who));
  li.append(document.createTextNode(text));
  ui.log.append(li);
  ui.log.scrollTop = ui.log.scrollHeight;
}

function setState(s) { ui.state.dataset.state = s; ui.state.textContent = s; }

function setRunning(on) {
  ui.start.disabled = on;
  for (const b of [ui.stop, ui.interrupt, ui.pause]) b.disabled = !on;
  ui.stop.textContent = "Stop";
  if (!on) { ui.pause.textContent = "Pause"; paused = false; setState("stopped"); }
}

// Connected, models still loading: nothing works yet but cancelling.
function setLoading() {
  for (const b of [ui.start, ui.interrupt, ui.pause]) b.disabled = true;
  ui.stop.disabled = false;
  ui.stop.textContent = "Cancel";
  ui.state.dataset.state = "loading";
  ui.state.textContent = "Loading models…";
}

function showLost(on, text = "Connection to the server lost.") {
  ui.lost.hidden = !on;
  ui.lostText.textContent = text;
  if (on) ui.reconnect.focus();
}

// --- playback (audio.js's PcmPlayer, the studio's streaming player) ---------------------------------
function playPcm(buf) {
  if (player) player.push(buf);
}

function stopPlayback() {
  player?.stop();
}

// --- mic ----------------------------------------------------------------------------------------
const WORKLET = `
class Capture extends AudioWorkletProcessor {
  constructor() { super(); this.buf = []; this.n = 0; this.block = Math.round(sampleRate * 0.04); }
  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    if (x) {
      const pcm = new Int16Array(x.length);
      for (let i = 0; i < x.length; i++) pcm[i] = Math.max(-1, Math.min(1, x[i])) * 32767;
      this.buf.push(pcm); this.n += pcm.length;
      if (this.n >= this.block) {
        const out = new Int16Array(this.n); let o = 0;
        for (const b of this.buf) { out.set(b, o); o += b.length; }
        this.port.postMessage(out.buffer, [out.buffer]); this.buf = []; this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor("capture", Capture);`;

async function startMic() {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  ctx = new AudioContext();
  player = new PcmPlayer({ context: ctx, sampleRate: outRate, lead: 0.03 });
  const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
  await ctx.audioWorklet.addModule(url);
  const src = ctx.createMediaStreamSource(micStream);
  worklet = new AudioWorkletNode(ctx, "capture");
  analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  src.connect(worklet);
  src.connect(analyser);
  worklet.port.onmessage = (e) => { if (ws && ws.readyState === WebSocket.OPEN && !paused) ws.send(e.data); };
  const data = new Float32Array(analyser.fftSize);
  const tick = () => {
    if (!analyser) return;
    analyser.getFloatTimeDomainData(data);
    let s = 0; for (const v of data) s += v * v;
    const level = Math.min(100, Math.sqrt(s / data.length) * 400);
    ui.meter.style.width = `${level}%`;
    ui.meter.parentElement.setAttribute("aria-valuenow", Math.round(level));
    requestAnimationFrame(tick);
  };
  tick();
}

function stopMic() {
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  micStream = ctx = worklet = analyser = player = null;
  ui.meter.style.width = "0";
}

// --- events -------------------------------------------------------------------------------------
function onEvent(ev) {
  switch (ev.type) {
    case "ready":
      outRate = ev.sample_rate;
      if (player) player.sampleRate = outRate;
      setRunning(true);
      setState("ready");
      addLog(`connected — voice engine ${ev.engine} (${ev.sample_rate} Hz)`);
      if (ev.knowledge_base && ev.knowledge_base.empty) {
        addLog(`The knowledge base is empty (0 notes indexed in ${ev.knowledge_base.folder}): the agent can chat but cannot answer questions from notes. Add .md/.txt/.pdf files there and run "echoforge kb build".`, "error");
      }
      break;
    case "state": setState(ev.state); break;
    case "transcript": if (ev.text) addLog(ev.text, "user"); ui.draft.textContent = ""; break;
    case "retrieval":
      addLog(ev.fallback ? "knowledge base: nothing relevant — no facts will be stated"
        : "knowledge base: " + ev.passages.map((p) => `${p.source} (${p.score.toFixed(2)})`).join(", "));
      break;
    case "llm_text": ui.draft.textContent += ev.text; break;
    case "interrupt": stopPlayback(); break;
    case "assistant": {
      ui.draft.textContent = "";
      const cite = ev.sources && ev.sources.length ? `  (source: ${ev.sources.join(", ")})` : "";
      if (ev.text || ev.interrupted) addLog((ev.text || "…") + cite, ev.interrupted ? "agent cut" : "agent");
      break;
    }
    case "latency": {
      turn += 1;
      const ms = (v) => (v == null ? "–" : Math.round(v * 1000));
      const tr = document.createElement("tr");
      for (const v of [turn, ms(ev.stt_s), ms(ev.rag_s), ms(ev.llm_first_token_s), ms(ev.tts_first_audio_s), ms(ev.voice_to_voice_s)]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      ui.latency.prepend(tr);
      break;
    }
    case "log": addLog(ev.message); break;
    case "error": addLog(`error: ${ev.message}`, "error"); break;
    default: break;
  }
}

function send(msg) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); }

function styleValues() {
  const out = {};
  for (const [k] of SLIDERS) out[k] = Number($(`#s-${k}`).value) / 100;
  return out;
}

async function start() {
  showLost(false);
  ui.start.disabled = true;
  try {
    await startMic();
  } catch (err) {
    addLog(`microphone unavailable: ${err.message}`, "error");
    ui.start.disabled = false;
    return;
  }
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const sock = new WebSocket(`${proto}://${location.host}/api/agent`);
  ws = sock;
  let opened = false;
  sock.binaryType = "arraybuffer";
  sock.onopen = () => {
    opened = true;
    send({ type: "start", sample_rate: ctx.sampleRate, voice: ui.voice.value || null, style: styleValues(), api_key: apiKey() || undefined });
    setLoading();
  };
  sock.onmessage = (e) => { if (typeof e.data === "string") onEvent(JSON.parse(e.data)); else playPcm(e.data); };
  sock.onclose = (e) => {
    if (sock !== ws) return; // closed by stop(): the user ended it
    ws = null;
    teardown();
    if (e.code === 1008) { // the server refused the session (auth, bad start): its reason says why
      if (e.reason) addLog(`closed: ${e.reason}`, "error");
      return;
    }
    const text = opened ? "Connection to the server lost." : "Cannot reach the EchoForge server.";
    addLog(text + (e.reason ? ` (${e.reason})` : ""), "error");
    showLost(true, `${text} Is it still running?`);
    loadHealth();
  };
}

function teardown() {
  stopPlayback();
  stopMic();
  setRunning(false);
}

function stop() {
  const sock = ws;
  ws = null;
  if (sock) {
    if (sock.readyState === WebSocket.OPEN) sock.send(JSON.stringify({ type: "stop" }));
    sock.close();
  }
  teardown();
}

ui.start.onclick = start;
ui.reconnect.onclick = start;
ui.stop.onclick = stop;
ui.interrupt.onclick = () => { stopPlayback(); send({ type: "interrupt" }); };
ui.pause.onclick = () => {
  paused = !paused;
  if (paused) stopPlayback();
  send({ type: paused ? "pause" : "resume" });
  ui.pause.textContent = paused ? "Resume" : "Pause";
};
ui.voice.onchange = () => send({ type: "voice", voice: ui.voice.value || null });

for (const [key, label] of SLIDERS) {
  const row = document.createElement("div");
  row.className = "slider";
  row.innerHTML = `<label for="s-${key}">${label}</label><input id="s-${key}" type="range" min="0" max="100" value="50"><output for="s-${key}">50</output>`;
  ui.sliders.append(row);
  const input = row.querySelector("input");
  input.oninput = () => { row.querySelector("output").textContent = input.value; };
  input.onchange = () => send({ type: "style", values: styleValues() });
}

// The studio's header badge: engine / fallback, "Server offline" while the server is away.
async function loadHealth() {
  try {
    renderEngineBadge(ui.badge, await api("/api/health"));
  } catch (err) {
    if (err.status === 503 && err.body?.engine) return; // degraded but running: keep the engine shown
    renderOfflineBadge(ui.badge, err.message);
  }
}

async function loadVoices() {
  try {
    const data = await api("/api/voices");
    for (const v of data.voices || []) ui.voice.append(h("option", { value: v.id }, v.name || v.id));
  } catch { /* voices are optional */ }
}

initTheme();
(async () => {
  await loadHealth();
  await loadVoices();
  const poll = async () => { await loadHealth(); setTimeout(poll, HEALTH_EVERY_MS); };
  setTimeout(poll, HEALTH_EVERY_MS);
  window.addEventListener("focus", () => loadHealth());
  document.documentElement.dataset.ready = "true"; // tests wait on this
})();
