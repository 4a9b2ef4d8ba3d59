// Characters page (#/characters): the voice cards with filters, sample playback and delete.

import { api, fetchAudioUrl } from "../api.js";
import { $, $$, h } from "../dom.js";
import { cap, engineName, isFallback, languageLabel, loadVoices, portrait, state, toast } from "../studio-ui.js";

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

/** After the voices load: the filters' choices and the cards. */
export function showVoices() {
  fillFilterOptions();
  renderVoices();
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

export function initCharacters() {
  $("#filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("#f-search").addEventListener("input", renderVoices);
  for (const sel of $$("#filters select")) sel.addEventListener("change", renderVoices);
}
