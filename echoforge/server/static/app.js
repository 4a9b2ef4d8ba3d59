// EchoForge Studio: a single-page app with hash routes (#/characters, #/studio,
// #/create, #/conversation). Vanilla ES module, no build step, nothing from the internet.
// All network access goes through api(), which adds the API key and turns the server's
// {"error": {...}} bodies into ApiError with a readable message.

import { ApiError, api, fetchAudioUrl, session } from "./api.js";
import { toWav, wavFromPcm16 } from "./audio.js";
import { $, $$, h, initTheme, renderEngineBadge, renderOfflineBadge, store } from "./dom.js";

const state = {
  health: null,
  voices: [],
  voicesLoaded: false,
  limit: 4096,
  offline: false,
  healthEveryMs: Number(new URLSearchParams(location.search).get("health_ms")) || 5000,
};
session.apiKey = store.get("apiKey", "");

// Tone presets: the text modifier the server parses off (never spoken) plus the sampling it
// selects, served by GET /api/presets from the one table (echoforge/analysis/params.py) and
// used as slider start values. Until they arrive (or if the server is unreachable) only
// "neutral" is offered, with the sliders' own start values.
let PRESETS = [{ id: "neutral", label: "Neutral", prefix: "", temperature: 0.9, topk: 50 }];

// ---------------------------------------------------------------- UI helpers

let toastTimer = 0;
function toast(message, kind = "info") {
  const el = $("#toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

// Where a server error's `param` points in the page: the field gets aria-invalid and focus.
function fieldForParam(param) {
  if (!param) return null;
  const turn = /^turns\.(\d+)\./.exec(param);
  if (turn) return $$("#turns textarea")[Number(turn[1])] || null;
  const map = { text: "#gen-text", input: "#gen-text", voice: "#gen-voice", seed: "#gen-seed", temperature: "#gen-temperature",
    topk: "#gen-topk", speed: "#gen-speed", name: "#cv-name", audio: "#cv-file", transcript: "#cv-transcript",
    description: "#cv-description", gender: "#cv-gender", style: "#cv-style", language: "#cv-language" };
  return map[param] ? $(map[param]) : null;
}

function clearInvalid(root) {
  for (const el of $$("[aria-invalid=true]", root)) el.removeAttribute("aria-invalid");
}

// ``errBox``: the message about this field, cleared as soon as the user changes the field.
function markInvalid(err, root, errBox = null) {
  const field = fieldForParam(err?.param);
  if (!field || (root && !root.contains(field))) return;
  field.setAttribute("aria-invalid", "true");
  const box = field.id === "cv-file" ? $("#dropzone") : null;
  if (box) box.setAttribute("aria-invalid", "true");
  const fixed = () => {
    field.removeAttribute("aria-invalid");
    box?.removeAttribute("aria-invalid");
    if (errBox && !errBox.hidden) showError(errBox, null);
  };
  field.addEventListener(field.tagName === "SELECT" || field.type === "file" ? "change" : "input", fixed, { once: true });
  field.focus({ preventScroll: false });
}

function showError(el, err) {
  if (!err) { el.hidden = true; el.textContent = ""; return; }
  el.textContent = "";
  const title = err.status === 401 || err.status === 403 ? "Authentication needed"
    : err.status === 429 ? "Queue full"
    : err.status >= 500 ? "Server error"
    : err.status >= 400 ? "Request rejected"
    : "Something went wrong";
  el.append(h("strong", {}, title), h("span", { class: "msg" }, err.message || String(err)));
  el.hidden = false;
}

function hashHue(text) {
  let x = 0;
  for (const ch of text) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

function initials(name) {
  const parts = String(name || "?").trim().split(/[\s_-]+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

function portrait(voice, extra = "") {
  return h("span", { class: `portrait ${extra}`, style: `--hue:${hashHue(voice.id || voice.name)}`, "aria-hidden": "true" }, initials(voice.name));
}

const languageNames = (() => {
  try { return new Intl.DisplayNames(["en"], { type: "language" }); } catch { return null; }
})();
function languageLabel(code) {
  if (!code) return "";
  try { return languageNames?.of(code) || code; } catch { return code; }
}
const cap = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);

function voiceById(id) { return state.voices.find((v) => v.id === id); }

function setProgress(block, fraction) {
  const bar = $(".progress", block);
  block.hidden = false;
  if (fraction === null || fraction === undefined || fraction <= 0) {
    bar.classList.add("indeterminate");
    bar.removeAttribute("aria-valuenow");
    $(".progress-bar", block).style.width = "";
  } else {
    bar.classList.remove("indeterminate");
    const pct = Math.round(Math.min(1, fraction) * 100);
    bar.setAttribute("aria-valuenow", String(pct));
    $(".progress-bar", block).style.width = `${pct}%`;
  }
}

function fmtSeconds(s) {
  if (!Number.isFinite(s)) return "";
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`;
}

// ---------------------------------------------------------------- theme

// initTheme (dom.js) wires #theme-toggle; the agent page uses the same one.

// ---------------------------------------------------------------- health + API key

function showKeyBar(open) {
  const bar = $("#key-bar");
  $("#key-toggle").hidden = false;
  bar.hidden = !open;
  $("#key-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("#api-key").value = session.apiKey;
}

function initKeyBar() {
  $("#key-toggle").addEventListener("click", () => showKeyBar($("#key-bar").hidden));
  $("#key-bar").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = $("#api-key").value.trim();
    const previous = session.apiKey;
    session.apiKey = key;
    if (key) {  // check the key before calling it saved
      try {
        await api("/api/voices");
      } catch (err) {
        if (err.status === 401 || err.status === 403) {
          session.apiKey = previous;
          toast(`This server did not accept that API key: ${err.message}`, "error");
          $("#api-key").focus();
          return;
        }
      }
    }
    store.set("apiKey", session.apiKey);
    showKeyBar(false);
    toast(session.apiKey ? "API key checked and saved in this browser." : "API key cleared.");
    await loadVoices();
  });
  $("#key-clear").addEventListener("click", () => {
    session.apiKey = "";
    store.remove("apiKey");
    $("#api-key").value = "";
    toast("API key removed from this browser.");
  });
}

const isFallback = () => Boolean(state.health?.engine?.is_fallback);
const engineName = () => state.health?.engine?.name || "the fallback";

// Fallback engines (Piper, espeak) ignore temperature, top-k and seed, and speak every
// character with their own voice: say so, and disable what does nothing.
function applyEngineMode() {
  const fallback = isFallback();
  for (const id of ["gen-temperature", "gen-topk", "gen-seed", "conv-temperature", "conv-topk", "conv-seed"]) {
    const el = $(`#${id}`);
    el.disabled = fallback;
    if (fallback) el.setAttribute("aria-describedby", `${id.split("-")[0]}-sampling-hint`);
    else el.removeAttribute("aria-describedby");
  }
  for (const id of ["#gen-sampling-hint", "#conv-sampling-hint"]) {
    $(id).hidden = !fallback;
    $(id).textContent = `The running engine (${engineName()}) ignores temperature, top-k and seed: they only apply to CSM.`;
  }
  const note = $("#gen-engine-note");
  note.hidden = !fallback;
  note.textContent = `Fallback mode: ${engineName()} speaks every character with its own voice, so results sound different from the character's sample (recorded for CSM).`;
  const conv = $("#conv-engine-note");
  if (conv) {
    conv.hidden = !fallback;
    conv.textContent = `Fallback mode: ${engineName()} is not CSM. It does not carry the conversation's context from turn to turn, and each speaker gets its own ${engineName()} voice, not the character's.`;
  }
}

let healthTimer = 0;
function scheduleHealth() {
  clearTimeout(healthTimer);
  healthTimer = setTimeout(async () => { await loadHealth(); scheduleHealth(); }, state.healthEveryMs);
}

async function loadHealth() {
  const badge = $("#engine-badge");
  try {
    const health = await api("/api/health", { quiet: true });
    state.health = health;
    const limit = health.max_text_chars ?? health.limits?.max_text_chars;
    if (Number.isFinite(limit) && limit > 0) state.limit = limit;
    renderEngineBadge(badge, health);
    if (health.version) $("#version").textContent = `v${health.version}`;
    if (health.auth_required) {
      $("#key-toggle").hidden = false;
      if (!session.apiKey) showKeyBar(true);
    }
    const wasOffline = state.offline;
    state.offline = false;
    applyEngineMode();
    updateCounter();
    if (wasOffline) { toast("The server is reachable again."); if (!state.voicesLoaded) loadVoices(); }
  } catch (err) {
    if (err.status === 503 && err.body?.engine) return; // degraded (queue down) but running: keep the engine shown
    state.offline = true;
    renderOfflineBadge(badge, err.message);
  }
}

// ---------------------------------------------------------------- router

const ROUTES = ["characters", "studio", "create", "conversation"];

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { route: ROUTES.includes(path) ? path : "characters", params: new URLSearchParams(query) };
}

function route() {
  const { route: name, params } = parseHash();
  for (const view of $$(".view")) view.hidden = view.dataset.view !== name;
  for (const a of $$(".main-nav a[data-route]")) {
    if (a.dataset.route === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const titles = { characters: "Characters", studio: "Studio", create: "Create voice", conversation: "Conversation" };
  document.title = `${titles[name]} · EchoForge`;
  if (name === "studio" && params.get("voice")) selectStudioVoice(params.get("voice"));
  return name;
}

// ---------------------------------------------------------------- characters

const samplePlayer = { audio: new Audio(), button: null, urls: new Map() };

function stopSample() {
  samplePlayer.audio.pause();
  if (samplePlayer.button) {
    samplePlayer.button.setAttribute("aria-pressed", "false");
    delete samplePlayer.button.dataset.state;
    $(".lbl", samplePlayer.button).textContent = "Play";
    samplePlayer.button = null;
  }
}

async function playSample(voice, button) {
  if (samplePlayer.button === button) { stopSample(); return; }
  stopSample();
  samplePlayer.button = button;
  button.setAttribute("aria-pressed", "true");
  $(".lbl", button).textContent = "Stop";
  try {
    let url = samplePlayer.urls.get(voice.id);
    if (!url) {
      url = (await fetchAudioUrl(voice.sample_url)).url;
      samplePlayer.urls.set(voice.id, url);
    }
    if (samplePlayer.button !== button) return; // user moved on while loading
    samplePlayer.audio.src = url;
    await samplePlayer.audio.play();
    button.dataset.state = "playing";
  } catch (err) {
    stopSample();
    toast(err.name === "NotAllowedError" ? "The browser blocked playback; click again." : `Could not play the sample: ${err.message}`, "error");
  }
}
samplePlayer.audio.addEventListener("ended", stopSample);

async function loadVoices() {
  const errBox = $("#voices-error");
  if (state.health?.auth_required && !session.apiKey) {
    // Don't send a request we know will be refused; say what is needed instead.
    state.voices = [];
    showError(errBox, new ApiError("This server requires an API key. Enter it at the top of the page to load the voices.", { status: 401 }));
    fillFilterOptions();
    renderVoices();
    fillVoiceSelects();
    return;
  }
  try {
    const data = await api("/api/voices");
    state.voices = (data.voices || data.data || []).map((v) => ({ ...v, tags: v.tags || {} }));
    state.voicesLoaded = true;
    showError(errBox, null);
  } catch (err) {
    state.voices = [];
    showError(errBox, err);
  }
  fillFilterOptions();
  renderVoices();
  fillVoiceSelects();
}

function fillFilterOptions() {
  for (const sel of $$("#filters select[data-tag]")) {
    const tag = sel.dataset.tag;
    const current = sel.value;
    const values = [...new Set(state.voices.map((v) => v.tags[tag]).filter(Boolean))].sort();
    sel.replaceChildren(h("option", { value: "" }, "Any"),
      ...values.map((v) => h("option", { value: v }, tag === "language" ? languageLabel(v) : cap(v))));
    sel.value = values.includes(current) ? current : "";
  }
  // Suggestions for the create form.
  const uniq = (tag) => [...new Set(state.voices.map((v) => v.tags[tag]).filter(Boolean))].sort();
  $("#cv-styles").replaceChildren(...uniq("style").map((s) => h("option", { value: s })));
  $("#cv-languages").replaceChildren(...uniq("language").map((s) => h("option", { value: s }, languageLabel(s))));
}

function matchesFilters(v) {
  for (const sel of $$("#filters select[data-tag]")) {
    if (sel.value && v.tags[sel.dataset.tag] !== sel.value) return false;
  }
  const q = $("#f-search").value.trim().toLowerCase();
  if (!q) return true;
  const hay = [v.name, v.id, v.description, v.transcript, ...Object.values(v.tags), languageLabel(v.tags.language)]
    .filter(Boolean).join(" ").toLowerCase();
  return q.split(/\s+/).every((word) => hay.includes(word));
}

function voiceCard(v) {
  const tags = [];
  if (v.tags.gender) tags.push(h("span", { class: "tag" }, cap(v.tags.gender)));
  if (v.tags.style) tags.push(h("span", { class: "tag" }, cap(v.tags.style)));
  if (v.tags.language) tags.push(h("span", { class: "tag", title: v.tags.language }, languageLabel(v.tags.language)));
  const play = h("button", { class: "btn btn-secondary btn-sm play-btn", type: "button", "aria-pressed": "false", "aria-label": `Play sample of ${v.name}` },
    h("span", { class: "play-icon", "aria-hidden": "true" }), h("span", { class: "lbl" }, "Play"));
  play.addEventListener("click", () => playSample(v, play));
  const actions = [
    v.sample_url ? play : null,
    h("a", { class: "btn btn-primary btn-sm", href: `#/studio?voice=${encodeURIComponent(v.id)}`, "aria-label": `Open ${v.name} in the studio` }, "Open in studio"),
  ];
  if (v.builtin === false) {
    actions.push(h("button", { class: "btn btn-danger btn-sm", type: "button", "aria-label": `Delete ${v.name}`, onclick: () => deleteVoice(v) }, "Delete"));
  }
  return h("li", { class: "voice-card", dataset: { voiceId: v.id } },
    h("div", { class: "top" }, portrait(v),
      h("div", { class: "who" }, h("h3", {}, v.name), h("span", { class: "kind" }, v.builtin ? "Built-in voice" : "Your voice"))),
    tags.length ? h("div", { class: "tags" }, tags) : null,
    h("p", { class: "desc", title: v.description || null }, v.description || (v.transcript ? `“${v.transcript}”` : "No description.")),
    isFallback() && v.sample_url ? h("p", { class: "fallback-note small" },
      `The sample is the character's real voice; the running fallback engine (${engineName()}) will not sound like it.`) : null,
    h("div", { class: "card-actions" }, actions));
}

function renderVoices() {
  const list = state.voices.filter(matchesFilters);
  $("#voice-grid").replaceChildren(...list.map(voiceCard));
  $("#voice-empty").hidden = !(state.voicesLoaded && list.length === 0);
  $("#voice-empty").textContent = state.voices.length ? "No voices match these filters." : "No voices yet — create one.";
  $("#voice-count").textContent = state.voicesLoaded
    ? (list.length === state.voices.length ? `${list.length} voice${list.length === 1 ? "" : "s"}` : `${list.length} of ${state.voices.length} voices`)
    : "";
}

async function deleteVoice(v) {
  if (!confirm(`Delete the voice “${v.name}”? This cannot be undone.`)) return;
  try {
    await api(`/api/voices/${encodeURIComponent(v.id)}`, { method: "DELETE" });
    toast(`Deleted “${v.name}”.`);
    const cards = $$("#voice-grid .voice-card");
    const index = cards.findIndex((c) => c.dataset.voiceId === v.id);
    await loadVoices();
    // Keep the keyboard where it was: the next card's first action (or the search field).
    const rest = $$("#voice-grid .voice-card");
    const next = rest[Math.min(Math.max(index, 0), rest.length - 1)];
    (next?.querySelector("a, button") || $("#f-search"))?.focus();
  } catch (err) {
    toast(err.message, "error");
  }
}

function initCharacters() {
  $("#filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("#f-search").addEventListener("input", renderVoices);
  for (const sel of $$("#filters select")) sel.addEventListener("change", renderVoices);
}

// ---------------------------------------------------------------- voice selects

function voiceOptions() {
  return state.voices.map((v) => h("option", { value: v.id }, v.tags.language ? `${v.name} · ${languageLabel(v.tags.language)}` : v.name));
}

function fillVoiceSelects() {
  for (const id of ["#gen-voice", "#conv-voice-0", "#conv-voice-1"]) {
    const sel = $(id);
    const current = sel.value || sel.dataset.want || "";
    sel.replaceChildren(...voiceOptions());
    if (!state.voices.length) sel.append(h("option", { value: "" }, "No voices available"));
    if (current && voiceById(current)) sel.value = current;
  }
  const conv = store.get("conversation", null);
  if (conv?.voices) conv.voices.forEach((id, i) => { if (voiceById(id)) $(`#conv-voice-${i}`).value = id; });
  else if (state.voices.length > 1 && $("#conv-voice-0").value === $("#conv-voice-1").value) $("#conv-voice-1").value = state.voices[1].id;
  const want = parseHash().params.get("voice");
  if (want) selectStudioVoice(want);
  updateStudioPortrait();
  renderTurns();
}

function selectStudioVoice(id) {
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

// ---------------------------------------------------------------- task runner

/**
 * Poll GET /api/tasks/{id} until it finishes; calls onUpdate(task) on every poll.
 * Resolves with the final task; rejects with ApiError when it failed or was cancelled.
 */
async function waitForTask(taskId, statusUrl, { onUpdate, signal }) {
  const url = statusUrl || `/api/tasks/${encodeURIComponent(taskId)}`;
  let delay = 250;
  for (;;) {
    if (signal?.aborted) throw new DOMException("cancelled", "AbortError");
    const task = await api(url, { signal });
    onUpdate?.(task);
    if (task.status === "done" || task.status === "succeeded" || task.status === "completed") return task;
    if (task.status === "failed") throw new ApiError(task.error?.message || task.error || "The generation failed.", { status: 500 });
    if (task.status === "cancelled") throw new DOMException("cancelled", "AbortError");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(1000, delay * 1.4);
  }
}

function describeTask(task, noun = "Generating") {
  if (task.status === "queued") {
    const pos = task.position ?? task.queue_position;
    return pos ? `Queued — position ${pos}…` : "Queued…";
  }
  if (task.status === "running") {
    const pct = Number.isFinite(task.progress) && task.progress > 0 ? ` ${Math.round(task.progress * 100)} %` : "…";
    return `${noun}${pct}`;
  }
  return cap(task.status || "");
}

/** Shared flow for the studio and conversation pages: submit → poll → fetch audio. */
class TaskPanel {
  constructor(prefix) {
    this.p = prefix;
    this.controller = null;
    this.taskId = null;
    this.objectUrl = null;
  }
  el(name) { return $(`#${this.p}-${name}`); }
  busy(on) {
    this.running = on;
    const submit = this.el("submit");
    submit.disabled = on || (this.p === "gen" && overLimit());
    submit.classList.toggle("busy", on);
    this.el("cancel").hidden = !on;
  }
  reset() {
    showError(this.el("error"), null);
    clearInvalid($(`#${this.p}-form`));
    this.el("result").hidden = true;
    this.el("progress").hidden = true;
  }
  status(text) { this.el("status").textContent = text; }
  fail(err) {
    this.el("progress").hidden = true;
    if (err.name === "AbortError") { this.status("Cancelled."); return; }
    this.status("Not generated.");
    showError(this.el("error"), err);
    markInvalid(err, $(`#${this.p}-form`), this.el("error"));
  }
  async showAudio(blob, url, meta, filename, label) {
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = url;
    const audio = this.el("audio");
    audio.src = url;
    if (label) audio.setAttribute("aria-label", label);
    const dl = this.el("download");
    dl.href = url;
    dl.download = filename;
    this.el("meta").textContent = meta;
    this.el("result").hidden = false;
    audio.addEventListener("loadedmetadata", () => {
      if (Number.isFinite(audio.duration)) this.el("meta").textContent = [fmtSeconds(audio.duration), meta].filter(Boolean).join(" · ");
    }, { once: true });
  }
  async cancel() {
    this.controller?.abort();
    if (this.taskId) {
      try { await api(`/api/tasks/${encodeURIComponent(this.taskId)}`, { method: "DELETE" }); } catch { /* already finished */ }
    }
  }
  /** Submit a task and show its result; returns {task, blob, url} or null. */
  async run(path, payload, { noun, filenameBase, format, label }) {
    if (this.running) return null; // one generation at a time per panel
    this.reset();
    this.busy(true);
    this.controller = new AbortController();
    const { signal } = this.controller;
    this.status("Submitting…");
    setProgress(this.el("progress"), 0);
    try {
      const created = await api(path, { method: "POST", json: payload, signal });
      this.taskId = created.task_id || created.id;
      const task = await waitForTask(this.taskId, created.status_url, {
        signal,
        onUpdate: (t) => { setProgress(this.el("progress"), t.progress); this.status(describeTask(t, noun)); },
      });
      setProgress(this.el("progress"), 1);
      this.status("Fetching audio…");
      const audioUrl = task.result_url || created.audio_url || `/api/tasks/${encodeURIComponent(this.taskId)}/audio`;
      const { url, blob } = await fetchAudioUrl(audioUrl, signal);
      const rtf = task.timings?.rtf;
      const meta = [format.toUpperCase(), Number.isFinite(rtf) ? `RTF ${rtf.toFixed(2)}` : ""].filter(Boolean).join(" · ");
      await this.showAudio(blob, url, meta, `${filenameBase}.${format}`, label);
      this.el("progress").hidden = true;
      this.status("Done.");
      return { task, blob, url, audioUrl };
    } catch (err) {
      this.fail(err);
      return null;
    } finally {
      this.busy(false);
      this.taskId = null;
      this.controller = null;
    }
  }
}

// ---------------------------------------------------------------- studio

const studio = new TaskPanel("gen");

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

function updateCounter() {
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

function bindSlider(id, fmt) {
  const input = $(`#${id}`);
  const out = $(`#${id}-out`);
  const sync = () => { out.textContent = fmt(Number(input.value)); };
  input.addEventListener("input", sync);
  sync();
  return sync;
}

const sliderSync = {};

function seedValue(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

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

function initStudio() {
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
  const ctx = new (window.AudioContext || window.webkitAudioContext)();
  const pcm = [];
  let sampleRate = 24000;
  let playhead = 0;
  let received = 0;
  let leftover = null; // a split byte between frames
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
        ctx.close();
        studio.fail(err);
      } else if (received > 0) {
        const blob = wavFromPcm16(pcm, sampleRate);
        const objectUrl = URL.createObjectURL(blob);
        const meta = [`streamed`, firstAudioMs !== null ? `first audio ${Math.round(firstAudioMs)} ms` : ""].filter(Boolean).join(" · ");
        studio.showAudio(blob, objectUrl, meta, "echoforge-stream.wav", `Streamed speech: ${base.voice_name || base.voice}`);
        studio.status("Done.");
        // Streams have no server copy: keep the WAV in this browser (IndexedDB) for Recent.
        const localId = `s_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
        saveClip(localId, blob).then((ok) => addHistory({ ...base, mode: "stream", format: "wav", ...(ok ? { local_id: localId } : {}) }));
        setTimeout(() => ctx.close(), Math.max(0, (playhead - ctx.currentTime) * 1000) + 500);
      } else {
        ctx.close();
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
          if (Number.isFinite(msg.sample_rate)) sampleRate = msg.sample_rate;
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
      // Binary: PCM s16le mono at sampleRate. Frames may split a sample; carry the odd byte.
      let bytes = new Uint8Array(ev.data);
      if (leftover) { const joined = new Uint8Array(leftover.length + bytes.length); joined.set(leftover); joined.set(bytes, leftover.length); bytes = joined; leftover = null; }
      if (bytes.length % 2) { leftover = bytes.slice(-1); bytes = bytes.slice(0, -1); }
      if (!bytes.length) return;
      const ints = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
      pcm.push(ints);
      received += ints.length;
      if (firstAudioMs === null) firstAudioMs = performance.now() - t0;
      const buffer = ctx.createBuffer(1, ints.length, sampleRate);
      const ch = buffer.getChannelData(0);
      for (let i = 0; i < ints.length; i++) ch[i] = ints[i] / 32768;
      const src = ctx.createBufferSource();
      src.buffer = buffer;
      src.connect(ctx.destination);
      playhead = Math.max(playhead, ctx.currentTime + 0.05);
      src.start(playhead);
      playhead += buffer.duration;
      studio.status(`Streaming… ${fmtSeconds(received / sampleRate)} received`);
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

// ---------------------------------------------------------------- create voice

const recorder = { rec: null, stream: null, chunks: [], timer: 0, started: 0 };
let clip = null; // {blob, name}

const AUDIO_EXTENSIONS = /\.(wav|mp3|flac|ogg|oga|opus|m4a|aac|webm|mp4)$/i;

// Refuse what the server would refuse, when the file is chosen (not only on submit).
function clipProblem(blob, name, seconds) {
  const limits = state.health?.limits || {};
  const maxMb = limits.max_upload_mb;
  if (blob && !(blob.type || "").startsWith("audio/") && !(blob.type || "").startsWith("video/webm") && !AUDIO_EXTENSIONS.test(name || "")) {
    return `“${name}” is not an audio file. Choose a recording (wav, mp3, flac, ogg, m4a or webm).`;
  }
  if (blob && Number.isFinite(maxMb) && blob.size > maxMb * 1024 * 1024) {
    return `“${name}” is ${(blob.size / 1048576).toFixed(1)} MB; this server accepts up to ${maxMb} MB.`;
  }
  const maxS = limits.max_upload_seconds;
  if (Number.isFinite(seconds) && Number.isFinite(maxS) && seconds > maxS) {
    return `This clip is ${fmtSeconds(seconds)} long; this server accepts clips up to ${fmtSeconds(maxS)}. Trim it to a clean 5–30 s excerpt.`;
  }
  return "";
}

function refuseClip(message) {
  showError($("#cv-error"), new ApiError(message));
  setClip(null);
  $("#cv-file").focus();
}

function setClip(blob, name) {
  if (blob) {
    const problem = clipProblem(blob, name);
    if (problem) { refuseClip(problem); return; }
    showError($("#cv-error"), null);
  }
  const prev = $("#cv-audio").src;
  if (prev.startsWith("blob:")) URL.revokeObjectURL(prev);
  clip = blob ? { blob, name } : null;
  $("#cv-preview").hidden = !blob;
  const warn = $("#cv-clip-warning");
  warn.hidden = true;
  if (blob) {
    const audio = $("#cv-audio");
    audio.src = URL.createObjectURL(blob);
    $("#cv-clip-name").textContent = `${name} · ${(blob.size / 1024).toFixed(0)} KB`;
    audio.addEventListener("loadedmetadata", () => {
      const d = audio.duration;
      if (!Number.isFinite(d) || clip?.blob !== blob) return;
      const tooLong = clipProblem(null, name, d);
      if (tooLong) { refuseClip(tooLong); return; }
      $("#cv-clip-name").textContent = `${name} · ${fmtSeconds(d)} · ${(blob.size / 1024).toFixed(0)} KB`;
      const msg = d < 5 ? `This clip is only ${fmtSeconds(d)}: 5–30 s of clean speech gives a much closer voice. Record or upload a longer one if you can.`
        : d > 30 ? `This clip is ${fmtSeconds(d)}: only about 30 s are useful; a shorter, clean excerpt works best.` : "";
      warn.textContent = msg;
      warn.hidden = !msg;
    }, { once: true });
  } else {
    $("#cv-audio").removeAttribute("src");
    $("#cv-file").value = "";
  }
}

async function toggleRecording() {
  const btn = $("#cv-record");
  if (recorder.rec && recorder.rec.state === "recording") { recorder.rec.stop(); return; }
  showError($("#cv-error"), null);
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    showError($("#cv-error"), new ApiError("This browser cannot record audio here (recording needs a secure page: http://127.0.0.1 or https)."));
    return;
  }
  try {
    recorder.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false } });
  } catch (err) {
    showError($("#cv-error"), new ApiError(`Microphone unavailable: ${err.message || err.name}. Allow microphone access or upload a file instead.`));
    return;
  }
  recorder.chunks = [];
  recorder.rec = new MediaRecorder(recorder.stream);
  recorder.rec.addEventListener("dataavailable", (e) => { if (e.data.size) recorder.chunks.push(e.data); });
  recorder.rec.addEventListener("stop", async () => {
    clearInterval(recorder.timer);
    recorder.stream.getTracks().forEach((t) => t.stop());
    btn.setAttribute("aria-pressed", "false");
    $(".rec-label", btn).textContent = "Record again";
    const raw = new Blob(recorder.chunks, { type: recorder.rec.mimeType || "audio/webm" });
    const secs = (performance.now() - recorder.started) / 1000;
    $("#cv-rec-time").textContent = `Recorded ${fmtSeconds(secs)}`;
    try {
      setClip(await toWav(raw), "recording.wav");
    } catch {
      setClip(raw, "recording.webm"); // let the server decode it
    }
  });
  recorder.started = performance.now();
  recorder.rec.start(250);
  btn.setAttribute("aria-pressed", "true");
  $(".rec-label", btn).textContent = "Stop recording";
  $("#cv-rec-time").textContent = "Recording… 0.0 s";
  recorder.timer = setInterval(() => {
    $("#cv-rec-time").textContent = `Recording… ${fmtSeconds((performance.now() - recorder.started) / 1000)}`;
  }, 200);
}

async function createVoice() {
  const errBox = $("#cv-error");
  const okBox = $("#cv-success");
  showError(errBox, null);
  clearInvalid($("#create-form"));
  okBox.hidden = true;
  const fd = new FormData();
  for (const name of ["name", "transcript", "gender", "style", "language", "description"]) {
    fd.append(name, $(`#cv-${name}`).value.trim());
  }
  if (clip) fd.append("audio", clip.blob, clip.name);
  const btn = $("#cv-submit");
  btn.disabled = true;
  btn.classList.add("busy");
  try {
    const typed = $("#cv-transcript").value.trim();
    const voice = await api("/api/voices", { method: "POST", form: fd });
    await loadVoices();
    okBox.replaceChildren(h("strong", {}, `Voice “${voice.name}” created.`),
      h("a", { href: `#/studio?voice=${encodeURIComponent(voice.id)}` }, "Open it in the studio"), " · ",
      h("a", { href: "#/characters" }, "See all characters"));
    if (!typed && voice.transcript) okBox.append(heardEditor(voice));  // transcribed on the server: let the user correct it
    okBox.hidden = false;
    $("#create-form").reset();
    setClip(null);
    $("#cv-rec-time").textContent = "";
    $(".rec-label", $("#cv-record")).textContent = "Record with microphone";
  } catch (err) {
    showError(errBox, err);
    markInvalid(err, $("#create-form"), errBox);
  } finally {
    btn.disabled = false;
    btn.classList.remove("busy");
  }
}

// The transcript the server heard in a clip uploaded without one (the bundled Whisper), editable.
function heardEditor(voice) {
  const area = h("textarea", { id: "cv-heard", rows: "3" });
  area.textContent = voice.transcript;  // the default value too: the form is reset after creation
  const status = h("span", { id: "cv-heard-status", role: "status" });
  const save = h("button", { type: "button", class: "btn", id: "cv-heard-save" }, "Save transcript");
  save.addEventListener("click", async () => {
    const text = area.value.trim();
    if (!text) { status.textContent = "The transcript cannot be empty."; area.focus(); return; }
    save.disabled = true;
    try {
      await api(`/api/voices/${encodeURIComponent(voice.id)}`, { method: "PATCH", json: { transcript: text } });
      status.textContent = "Transcript saved.";
      await loadVoices();
    } catch (err) {
      status.textContent = `Could not save the transcript: ${err.message || err}`;
    } finally {
      save.disabled = false;
    }
  });
  return h("div", { class: "field heard" },
    h("label", { for: "cv-heard" }, "Heard in the clip (transcribed automatically; correct it if needed)"),
    area, h("div", {}, save, " ", status));
}

function initCreate() {
  $("#cv-file").addEventListener("change", () => {
    const f = $("#cv-file").files[0];
    if (f) setClip(f, f.name);
  });
  $("#cv-clip-clear").addEventListener("click", () => setClip(null));
  $("#cv-record").addEventListener("click", toggleRecording);
  $("#cv-record").setAttribute("aria-pressed", "false");
  const dz = $("#dropzone");
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("drag"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("drag"));
  dz.addEventListener("drop", (e) => {
    e.preventDefault();
    dz.classList.remove("drag");
    const f = e.dataTransfer.files[0];
    if (f) setClip(f, f.name);
  });
  $("#create-form").addEventListener("submit", (ev) => { ev.preventDefault(); createVoice(); });
}

// ---------------------------------------------------------------- conversation

const convPanel = new TaskPanel("conv");
let turns = store.get("conversation", null)?.turns || [
  { speaker: 0, text: "Hey, did you get a chance to listen to the new recording?" },
  { speaker: 1, text: "I did. The second take sounds much warmer." },
];

function saveConversation() {
  store.set("conversation", { turns, voices: [$("#conv-voice-0").value, $("#conv-voice-1").value] });
}

function speakerName(i) {
  const v = voiceById($(`#conv-voice-${i}`).value);
  return `${"AB"[i]}${v ? ` · ${v.name}` : ""}`;
}

function renderTurns(focus) {
  const list = $("#turns");
  list.replaceChildren(...turns.map((t, i) => {
    const sel = h("select", { "aria-label": `Speaker of turn ${i + 1}` },
      h("option", { value: "0" }, speakerName(0)), h("option", { value: "1" }, speakerName(1)));
    sel.value = String(t.speaker);
    sel.addEventListener("change", () => { t.speaker = Number(sel.value); li.dataset.speaker = sel.value; saveConversation(); });
    const ta = h("textarea", { "aria-label": `Text of turn ${i + 1}`, placeholder: "What does this speaker say?" });
    ta.value = t.text;
    // Grow with the text (only while visible: a hidden textarea has no scrollHeight).
    const grow = () => { if (ta.offsetParent) { ta.style.height = "auto"; ta.style.height = `${ta.scrollHeight + 2}px`; } };
    ta.rows = Math.min(8, Math.max(2, Math.ceil(t.text.length / 45)));
    ta.addEventListener("input", () => { t.text = ta.value; saveConversation(); grow(); });
    const tool = (label, icon, fn, disabled) => {
      const b = h("button", { class: "icon-btn", type: "button", "aria-label": `${label} turn ${i + 1}`, title: label, disabled },
        h("span", { "aria-hidden": "true" }, icon));
      b.addEventListener("click", fn);
      return b;
    };
    const li = h("li", { class: "turn", dataset: { speaker: String(t.speaker) } },
      h("div", { class: "turn-head" }, h("span", { class: "turn-no" }, `Turn ${i + 1}`), sel),
      ta,
      h("div", { class: "turn-tools" },
        tool("Move up", "↑", () => moveTurn(i, -1), i === 0),
        tool("Move down", "↓", () => moveTurn(i, 1), i === turns.length - 1),
        tool("Remove", "✕", () => removeTurn(i), turns.length <= 1)));
    return li;
  }));
  if (focus !== undefined) $$("textarea", list)[focus]?.focus();
}

function moveTurn(i, delta) {
  const j = i + delta;
  if (j < 0 || j >= turns.length) return;
  [turns[i], turns[j]] = [turns[j], turns[i]];
  saveConversation();
  renderTurns();
  $$(".turn", $("#turns"))[j]?.querySelector(`button[title="${delta < 0 ? "Move up" : "Move down"}"]:not(:disabled)`)?.focus();
}

function removeTurn(i) {
  turns.splice(i, 1);
  saveConversation();
  renderTurns(Math.min(i, turns.length - 1));
}

function initConversation() {
  $("#turn-add").addEventListener("click", () => {
    const last = turns[turns.length - 1];
    turns.push({ speaker: last ? 1 - last.speaker : 0, text: "" });
    saveConversation();
    renderTurns(turns.length - 1);
  });
  for (const i of [0, 1]) $(`#conv-voice-${i}`).addEventListener("change", () => { saveConversation(); renderTurns(); });
  bindSlider("conv-temperature", (v) => v.toFixed(2));
  bindSlider("conv-topk", (v) => String(v));
  $("#conv-cancel").addEventListener("click", () => convPanel.cancel());
  $("#conv-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (convPanel.running) return;
    const voices = [$("#conv-voice-0").value, $("#conv-voice-1").value];
    const payload = {
      turns: turns.map((t) => ({ voice: voices[t.speaker], text: t.text })),
      format: $("#conv-format").value,
      temperature: Number($("#conv-temperature").value),
      topk: Number($("#conv-topk").value),
    };
    const seed = seedValue("#conv-seed");
    if (seed !== undefined) payload.seed = seed;
    if (isFallback()) { delete payload.temperature; delete payload.topk; delete payload.seed; }
    await convPanel.run("/api/conversations", payload, { noun: "Rendering", filenameBase: "echoforge-conversation", format: payload.format, label: "Rendered conversation" });
  });
  renderTurns();
}

// ---------------------------------------------------------------- start

async function main() {
  session.onAuthError = () => showKeyBar(true);
  initTheme();
  initKeyBar();
  initCharacters();
  initStudio();
  initCreate();
  initConversation();
  window.addEventListener("hashchange", () => { route(); $("#main").focus({ preventScroll: true }); });
  // The skip link must not touch the hash: the hash is the router's.
  $(".skip-link").addEventListener("click", (ev) => { ev.preventDefault(); $("#main").focus(); });
  route();
  await loadHealth();
  await loadVoices();
  scheduleHealth(); // the header badge follows the server (offline when it goes away)
  window.addEventListener("focus", () => loadHealth());
  document.documentElement.dataset.ready = "true"; // tests wait on this
}

main();
