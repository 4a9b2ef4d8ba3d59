// What the studio's pages share: the state the server tells us (health, voices, limits), the
// toast and error boxes, field highlighting, portraits, progress bars, sliders, the route's
// query and the API-key bar. Pages import from here; nothing here imports a page.

import { api, ApiError, session } from "./api.js";
import { $, $$, h } from "./dom.js";

export const state = {
  health: null,
  voices: [],
  voicesLoaded: false,
  limit: 4096,
  offline: false,
  healthEveryMs: Number(new URLSearchParams(location.search).get("health_ms")) || 5000,
};

// ---------------------------------------------------------------- UI helpers

let toastTimer = 0;
export function toast(message, kind = "info") {
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

export function clearInvalid(root) {
  for (const el of $$("[aria-invalid=true]", root)) el.removeAttribute("aria-invalid");
}

// ``errBox``: the message about this field, cleared as soon as the user changes the field.
export function markInvalid(err, root, errBox = null) {
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

export function showError(el, err) {
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

export function hashHue(text) {
  let x = 0;
  for (const ch of text) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

export function initials(name) {
  const parts = String(name || "?").trim().split(/[\s_-]+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

export function portrait(voice, extra = "") {
  return h("span", { class: `portrait ${extra}`, style: `--hue:${hashHue(voice.id || voice.name)}`, "aria-hidden": "true" }, initials(voice.name));
}

const languageNames = (() => {
  try { return new Intl.DisplayNames(["en"], { type: "language" }); } catch { return null; }
})();
export function languageLabel(code) {
  if (!code) return "";
  try { return languageNames?.of(code) || code; } catch { return code; }
}
export const cap = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);

export function voiceById(id) { return state.voices.find((v) => v.id === id); }

export function setProgress(block, fraction) {
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

export function fmtSeconds(s) {
  if (!Number.isFinite(s)) return "";
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`;
}

// ---------------------------------------------------------------- engine mode

export const isFallback = () => Boolean(state.health?.engine?.is_fallback);
export const engineName = () => state.health?.engine?.name || "the fallback";

// ---------------------------------------------------------------- API key bar (opened by the shell and on auth errors)

export function showKeyBar(open) {
  const bar = $("#key-bar");
  $("#key-toggle").hidden = false;
  bar.hidden = !open;
  $("#key-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("#api-key").value = session.apiKey;
}

// ---------------------------------------------------------------- route query

const ROUTES = ["characters", "studio", "create", "conversation"];

export function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { route: ROUTES.includes(path) ? path : "characters", params: new URLSearchParams(query) };
}

// ---------------------------------------------------------------- voices (shared by every page)

// Called in order after every load of the voices (the pages' lists and selects).
const voiceListeners = [];
export function onVoices(fn) { voiceListeners.push(fn); }

export async function loadVoices() {
  const errBox = $("#voices-error");
  if (state.health?.auth_required && !session.apiKey) {
    // Don't send a request we know will be refused; say what is needed instead.
    state.voices = [];
    showError(errBox, new ApiError("This server requires an API key. Enter it at the top of the page to load the voices.", { status: 401 }));
    for (const fn of voiceListeners) fn();
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
  for (const fn of voiceListeners) fn();
}

function voiceOptions() {
  return state.voices.map((v) => h("option", { value: v.id }, v.tags.language ? `${v.name} · ${languageLabel(v.tags.language)}` : v.name));
}

/** Fill a character select, keeping its choice (or the one it waits for) when still there. */
export function fillVoiceSelect(sel) {
  const current = sel.value || sel.dataset.want || "";
  sel.replaceChildren(...voiceOptions());
  if (!state.voices.length) sel.append(h("option", { value: "" }, "No voices available"));
  if (current && voiceById(current)) sel.value = current;
}

// ---------------------------------------------------------------- form controls

export function bindSlider(id, fmt) {
  const input = $(`#${id}`);
  const out = $(`#${id}-out`);
  const sync = () => { out.textContent = fmt(Number(input.value)); };
  input.addEventListener("input", sync);
  sync();
  return sync;
}

export function seedValue(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}
