// Conversation page (#/conversation): a two-person script, turn by turn (kept in this browser),
// rendered as one audio file by the task flow.

import { $, $$, h, store } from "../dom.js";
import { bindSlider, fillVoiceSelect, isFallback, seedValue, state, voiceById } from "../studio-ui.js";
import { TaskPanel } from "../task-panel.js";

const convPanel = new TaskPanel("conv");
let turns = store.get("conversation", null)?.turns || [
  { speaker: 0, text: "Hey, did you get a chance to listen to the new recording?" },
  { speaker: 1, text: "I did. The second take sounds much warmer." },
];


/** The two speakers' selects after the voices load (restoring the saved pair). */
export function fillConversationVoices() {
  for (const i of [0, 1]) fillVoiceSelect($(`#conv-voice-${i}`));
  const conv = store.get("conversation", null);
  if (conv?.voices) conv.voices.forEach((id, i) => { if (voiceById(id)) $(`#conv-voice-${i}`).value = id; });
  else if (state.voices.length > 1 && $("#conv-voice-0").value === $("#conv-voice-1").value) $("#conv-voice-1").value = state.voices[1].id;
  renderTurns();
}

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

export function initConversation() {
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
