// Studio page (#/studio): one character speaks a text, rendered as a task or streamed over
// WebSocket (played as it arrives by the shared PcmPlayer); tone presets, history (streamed clips
// kept in IndexedDB) and captions from the task's word timings.

import { ApiError, api, fetchAudioUrl, session } from "../api.js";
import { PcmPlayer, wavFromPcm16 } from "../audio.js";
import { $, $$, h, store } from "../dom.js";
import {
  bindSlider, cap, engineName, fillVoiceSelect, fmtSeconds, hashHue, initials, isFallback, parseHash, portrait,
  seedValue, setProgress, showKeyBar, state, voiceById,
} from "../studio-ui.js";
import { TaskPanel } from "../task-panel.js";

// Tone presets: the text modifier the server parses off (never spoken) plus the sampling it
// selects, served by GET /api/presets from the one table (echoforge/analysis/params.py) and
// used as slider start values. Until they arrive (or if the server is unreachable) only
// "neutral" is offered, with the sliders' own start values.
let PRESETS = [{ id: "neutral", label: "Neutral", prefix: "", temperature: 0.9, topk: 50 }];

/** The studio's character select after the voices load (the route may ask for one). */
export function fillStudioVoice() {
  fillVoiceSelect($("#gen-voice"));
  const want = parseHash().params.get("voice");
  if (want) selectStudioVoice(want);
  updateStudioPortrait();
}

export function selectStudioVoice(id) {
  const sel = $("#gen-voice");
  sel.dataset.want = id;
  if (voiceById(id)) sel.value = id;
  updateStudioPortrait();
}

function updateStudioPortrait() {
  const v = voiceById($("#gen-voice").value);
  const slot = $("#gen-portrait");
  const desc = $("#gen-voice-desc");
  if (!v) { slot.hidden = true; desc.textContent = ""; return; }
  slot.hidden = false;
  desc.textContent = [[v.tags.gender, v.tags.style].filter(Boolean).map(cap).join(", "), v.description].filter(Boolean).join(" — ");
  slot.textContent = initials(v.name);
  slot.style.setProperty("--hue", hashHue(v.id || v.name));
}

// ---------------------------------------------------------------- studio

const studio = new TaskPanel("gen", { blocked: () => overLimit() });

function currentPreset() {
  const id = $("#gen-presets input:checked")?.value || "neutral";
  return PRESETS.find((p) => p.id === id) || PRESETS[0];
}

function textToSend() {
  const text = $("#gen-text").value;
  const p = currentPreset();
  return p.prefix && text.trim() ? `${p.prefix} ${text}` : text;
}

function overLimit() { return textToSend().length > state.limit; }

export function updateCounter() {
  const sent = textToSend();
  const counter = $("#gen-count");
  counter.textContent = `${sent.length.toLocaleString("en")} / ${state.limit.toLocaleString("en")}`;
  const over = sent.length > state.limit;
  counter.classList.toggle("over", over);
  counter.setAttribute("aria-label", over ? `${sent.length} characters, over the limit of ${state.limit}` : `${sent.length} of ${state.limit} characters`);
  const note = $("#gen-sent");
  const p = currentPreset();
  note.hidden = !(p.prefix && $("#gen-text").value.trim());
  note.textContent = `Sent with the tone marker “${p.prefix}” in front.`;
  $("#gen-submit").disabled = over || Boolean(studio.running);
  const why = $("#gen-over");
  why.hidden = !over;
  why.textContent = over ? `Too long: ${(sent.length - state.limit).toLocaleString("en")} characters over this server's limit of ${state.limit.toLocaleString("en")}. Shorten the text to generate.` : "";
}


const sliderSync = {};

function generationPayload() {
  const body = {
    text: textToSend(),
    voice: $("#gen-voice").value,
    temperature: Number($("#gen-temperature").value),
    topk: Number($("#gen-topk").value),
    speed: Number($("#gen-speed").value),
    format: $("#gen-format").value,
    timestamps: true, // word timings: captions while it plays, SRT / VTT downloads
  };
  const seed = seedValue("#gen-seed");
  if (seed !== undefined) body.seed = seed;
  if (isFallback()) { delete body.temperature; delete body.topk; delete body.seed; } // ignored there
  // The tone also goes as OpenAI-style instructions, which the server maps to style hints.
  const preset = currentPreset();
  if (preset.prefix) body.instructions = preset.id;
  return body;
}

// Streamed results, kept in IndexedDB (localStorage is too small for audio).
function clipDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("echoforge", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("clips");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function clipTx(mode, fn) {
  const db = await clipDb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("clips", mode);
    const req = fn(tx.objectStore("clips"));
    tx.oncomplete = () => { db.close(); resolve(req?.result); };
    tx.onerror = () => { db.close(); reject(tx.error); };
  });
}
async function saveClip(id, blob) {
  try { await clipTx("readwrite", (s) => s.put(blob, id)); return true; } catch { return false; }
}
async function loadClip(id) {
  try { return (await clipTx("readonly", (s) => s.get(id))) || null; } catch { return null; }
}
function clearClips() { clipTx("readwrite", (s) => s.clear()).catch(() => {}); }

function addHistory(entry) {
  const list = store.get("history", []);
  list.unshift(entry);
  store.set("history", list.slice(0, 25));
  renderHistory();
}

function renderHistory() {
  const list = store.get("history", []);
  $("#history-empty").hidden = list.length > 0;
  $("#history-clear").hidden = list.length === 0;
  $("#history").replaceChildren(...list.map((e, i) => {
    const v = voiceById(e.voice) || { id: e.voice, name: e.voice_name || e.voice || "?" };
    const when = new Date(e.created_at);
    const play = h("button", { class: "btn btn-ghost btn-sm", type: "button", "aria-label": `Load generation ${i + 1} into the player` }, "Play");
    play.addEventListener("click", () => replayHistory(e));
    const reuse = h("button", { class: "btn btn-ghost btn-sm", type: "button", "aria-label": `Reuse text of generation ${i + 1}` }, "Reuse");
    reuse.addEventListener("click", () => {
      $("#gen-text").value = e.text;
      if (voiceById(e.voice)) $("#gen-voice").value = e.voice;
      const preset = $(`#gen-presets input[value="${e.preset || "neutral"}"]`);
      if (preset) preset.checked = true;
      updateStudioPortrait();
      updateCounter();
      $("#gen-text").focus();
    });
    return h("li", {},
      portrait(v, "portrait-sm"),
      h("div", { class: "h-body" },
        h("div", { class: "h-text", title: e.text }, e.text),
        h("div", { class: "h-meta" }, [v.name, e.mode === "stream" ? "streamed" : (e.format || "").toUpperCase(),
          when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })].filter(Boolean).join(" · "))),
      h("div", { class: "h-actions" }, e.audio_url || e.local_id ? play : null, reuse));
  }));
}

async function replayHistory(e) {
  studio.reset();
  studio.status("Loading from the server…");
  try {
    let url, blob;
    if (e.local_id) {
      blob = await loadClip(e.local_id);
      if (!blob) throw new ApiError("This streamed result is no longer stored in this browser.", { status: 410 });
      url = URL.createObjectURL(blob);
    } else {
      ({ url, blob } = await fetchAudioUrl(e.audio_url));
    }
    await studio.showAudio(blob, url, e.mode === "stream" ? "streamed · WAV" : (e.format || "wav").toUpperCase(),
      `echoforge-${e.task_id || e.local_id || "audio"}.${e.format || "wav"}`, `Speech from history: ${e.voice_name || e.voice}`);
    studio.status("Loaded from history.");
    $("#gen-audio").play().catch(() => {});
  } catch (err) {
    if (err.status === 404 || err.status === 410) err.message = "This result is no longer on the server (results expire).";
    studio.fail(err);
  }
}

// On a fallback engine a tone changes nothing audible (its sliders are disabled): say so where it is chosen.
function fallbackToneNote(preset, after) {
  let el = $("#gen-preset-fallback");
  if (!el) {
    el = h("p", { id: "gen-preset-fallback", class: "fallback-note small", role: "status" });
    after.after(el);
  }
  el.hidden = !(isFallback() && preset.id !== "neutral");
  el.textContent = `The running engine (${engineName()}) is a fallback: the “${preset.label}” tone changes nothing audible there; tones select CSM's sampling.`;
}

export function initStudio() {
  const group = $("#gen-presets");
  const renderPresets = () => group.replaceChildren(...PRESETS.map((p, i) => h("label", {},
    h("input", { type: "radio", name: "preset", value: p.id, checked: i === 0 }),
    h("span", {}, p.label))));
  renderPresets();
  api("/api/presets", { quiet: true }).then((list) => { PRESETS = list; renderPresets(); }).catch(() => { /* offline: neutral only */ });
  // A tone sets the sliders only while the user has not moved them; after that it says what
  // it would set and leaves the user's values alone.
  group.addEventListener("change", () => {
    const p = currentPreset();
    const note = $("#gen-preset-note");
    fallbackToneNote(p, note);
    if (state.slidersTouched) {
      note.hidden = false;
      note.replaceChildren(`Kept your settings; ${p.label} suggests temperature ${p.temperature.toFixed(2)}, top-k ${p.topk}. `,
        h("button", { class: "btn btn-ghost btn-sm", type: "button", id: "gen-preset-apply", onclick: () => {
          $("#gen-temperature").value = p.temperature; $("#gen-topk").value = p.topk;
          sliderSync.t(); sliderSync.k(); state.slidersTouched = false; note.hidden = true;
        } }, "Use these"));
    } else {
      $("#gen-temperature").value = p.temperature;
      $("#gen-topk").value = p.topk;
      sliderSync.t(); sliderSync.k();
      note.hidden = true;
    }
    updateCounter();
  });
  for (const id of ["#gen-temperature", "#gen-topk"]) $(id).addEventListener("input", () => { state.slidersTouched = true; });
  sliderSync.t = bindSlider("gen-temperature", (v) => v.toFixed(2));
  sliderSync.k = bindSlider("gen-topk", (v) => String(v));
  bindSlider("gen-speed", (v) => `${v.toFixed(2)}×`);
  $("#gen-text").addEventListener("input", updateCounter);
  $("#gen-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("#gen-form").requestSubmit(); }
  });
  $("#gen-voice").addEventListener("change", () => {
    delete $("#gen-voice").dataset.want;
    updateStudioPortrait();
  });
  $("#gen-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (studio.running || overLimit()) return; // Ctrl+Enter while generating: no second request
    generate();
  });
  // Streaming always delivers PCM (kept as WAV), so the format only applies to rendered files.
  for (const radio of $$('#gen-form input[name="mode"]')) {
    radio.addEventListener("change", () => { $("#gen-format").disabled = radio.value === "stream" && radio.checked; });
  }
  $("#gen-cancel").addEventListener("click", () => { studio.cancel(); stopStreaming?.(); });
  $("#history-clear").addEventListener("click", () => { store.set("history", []); clearClips(); renderHistory(); });
  updateCounter();
  renderHistory();
}

async function generate() {
  clearCaptions();
  const payload = generationPayload();
  const mode = $('#gen-form input[name="mode"]:checked').value;
  const voice = voiceById(payload.voice);
  const base = { text: $("#gen-text").value, voice: payload.voice, voice_name: voice?.name, preset: currentPreset().id, created_at: new Date().toISOString() };
  if (mode === "stream") {
    await streamGenerate(payload, base);
    return;
  }
  const slug = (voice?.name || "speech").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
  const done = await studio.run("/api/generate", payload, { noun: "Generating", filenameBase: `echoforge-${slug}`, format: payload.format,
    label: `Generated speech: ${voice?.name || payload.voice}` });
  if (done) {
    addHistory({ ...base, format: payload.format, task_id: done.task.id || done.task.task_id, audio_url: done.audioUrl, rtf: done.task.timings?.rtf, mode: "task" });
    await showCaptions(done.task, `echoforge-${slug}`);
  }
}

// ---------------------------------------------------------------- captions (word timings of a task)

let captionUrls = [];

function clearCaptions() {
  for (const url of captionUrls) URL.revokeObjectURL(url);
  captionUrls = [];
  const audio = $("#gen-audio");
  for (const t of audio.querySelectorAll("track")) t.remove();
  for (const id of ["#gen-caption", "#gen-words", "#gen-srt", "#gen-vtt"]) $(id).hidden = true;
  audio.ontimeupdate = null;
}

/** A <track> with the task's WebVTT, the caption line and word highlight while playing, SRT / VTT downloads. */
async function showCaptions(task, filenameBase) {
  clearCaptions();
  const words = task.words;
  if (!Array.isArray(words) || !words.length || !task.captions_url) return;
  const audio = $("#gen-audio");
  const files = {};
  for (const fmt of ["vtt", "srt"]) {
    try {
      const { url } = await fetchAudioUrl(`${task.captions_url}?format=${fmt}`);
      captionUrls.push(url);
      files[fmt] = url;
    } catch { /* captions are an extra: the audio stays */ }
  }
  if (files.vtt) {
    const track = h("track", { kind: "captions", srclang: "en", label: "Captions", src: files.vtt, default: "" });
    audio.append(track);
    track.track.mode = "hidden"; // cues drive the caption line below (an <audio> shows none itself)
  }
  for (const fmt of ["srt", "vtt"]) {
    const a = $(`#gen-${fmt}`);
    if (!files[fmt]) continue;
    a.href = files[fmt];
    a.download = `${filenameBase}.${fmt}`;
    a.hidden = false;
  }
  const box = $("#gen-words");
  box.replaceChildren(...words.flatMap((w, i) => [h("span", { class: "w", "data-i": String(i) }, w.word), " "]));
  box.hidden = false;
  const line = $("#gen-caption");
  line.hidden = false;
  line.textContent = "";
  const spans = box.querySelectorAll(".w");
  let current = -1;
  const update = () => {
    const t = audio.currentTime;
    let i = -1;
    for (let k = 0; k < words.length; k++) if (words[k].start_s <= t + 0.01) i = k; else break;
    if (i >= 0 && t > words[i].end_s + 0.5 && (i + 1 >= words.length)) i = -1; // after the last word
    if (i !== current) {
      if (current >= 0) { spans[current].classList.remove("current"); spans[current].removeAttribute("aria-current"); }
      if (i >= 0) { spans[i].classList.add("current"); spans[i].setAttribute("aria-current", "true"); }
      current = i;
    }
    const cues = audio.querySelector("track")?.track?.activeCues;
    line.textContent = cues && cues.length ? Array.from(cues).map((c) => c.text).join(" ") : "";
  };
  audio.ontimeupdate = update;
  audio.onseeked = update;
  update();
}

// ---------------------------------------------------------------- streaming (WebSocket + Web Audio)

let stopStreaming = null;

function streamGenerate(payload, base) {
  studio.reset();
  studio.busy(true);
  studio.status("Connecting…");
  setProgress(studio.el("progress"), 0);
  const url = new URL("/api/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (session.apiKey) url.searchParams.set("api_key", session.apiKey);
  const player = new PcmPlayer({ lead: 0.05 }); // sample rate: the server's `ready`
  const pcm = [];
  let received = 0;
  let finished = false;
  const t0 = performance.now();
  let firstAudioMs = null;

  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const finish = (err) => {
      if (finished) return;
      finished = true;
      stopStreaming = null;
      studio.busy(false);
      studio.el("progress").hidden = true;
      try { if (ws.readyState <= 1) ws.close(); } catch { /* closing */ }
      if (err) {
        player.close();
        studio.fail(err);
      } else if (received > 0) {
        const blob = wavFromPcm16(pcm, player.sampleRate);
        const objectUrl = URL.createObjectURL(blob);
        const meta = [`streamed`, firstAudioMs !== null ? `first audio ${Math.round(firstAudioMs)} ms` : ""].filter(Boolean).join(" · ");
        studio.showAudio(blob, objectUrl, meta, "echoforge-stream.wav", `Streamed speech: ${base.voice_name || base.voice}`);
        studio.status("Done.");
        // Streams have no server copy: keep the WAV in this browser (IndexedDB) for Recent.
        const localId = `s_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
        saveClip(localId, blob).then((ok) => addHistory({ ...base, mode: "stream", format: "wav", ...(ok ? { local_id: localId } : {}) }));
        setTimeout(() => player.close(), player.remaining() * 1000 + 500);
      } else {
        player.close();
        studio.status("The server sent no audio.");
      }
      resolve();
    };
    stopStreaming = () => { finish(new DOMException("cancelled", "AbortError")); };
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "start", voice: payload.voice, format: "pcm", temperature: payload.temperature,
        topk: payload.topk, speed: payload.speed, ...(payload.seed !== undefined ? { seed: payload.seed } : {}),
        ...(session.apiKey ? { api_key: session.apiKey } : {}) }));
    });
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string") {
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        if (msg.type === "ready") {
          if (Number.isFinite(msg.sample_rate)) player.sampleRate = msg.sample_rate;
          studio.status("Generating…");
          ws.send(JSON.stringify({ type: "text", text: payload.text }));
          ws.send(JSON.stringify({ type: "end" }));
        } else if (msg.type === "done") {
          finish(null);
        } else if (msg.type === "error") {
          finish(new ApiError(msg.message || msg.error?.message || "Streaming failed.", { status: msg.status || 400, code: msg.code }));
        }
        return;
      }
      // Binary: PCM s16le mono at the player's rate (the player carries a sample split between frames).
      const ints = player.decode(ev.data);
      if (!ints) return;
      pcm.push(ints);
      received += ints.length;
      if (firstAudioMs === null) firstAudioMs = performance.now() - t0;
      player.play(ints);
      studio.status(`Streaming… ${fmtSeconds(received / player.sampleRate)} received`);
    });
    ws.addEventListener("error", () => finish(new ApiError("The streaming connection failed. Check the server (and the API key, if one is required).")));
    ws.addEventListener("close", (ev) => {
      if (finished) return;
      if (ev.code === 1008 || ev.code === 4401 || ev.code === 4001) { showKeyBar(true); finish(new ApiError(`Authentication failed: ${ev.reason || "API key required"}.`, { status: 401 })); }
      else if (received > 0) finish(null);
      else finish(new ApiError(ev.reason ? `Streaming closed: ${ev.reason}` : "The streaming connection closed before any audio arrived."));
    });
  });
}

