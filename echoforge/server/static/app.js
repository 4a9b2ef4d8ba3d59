// EchoForge Studio: a single-page app with hash routes (#/characters, #/studio,
// #/create, #/conversation). Vanilla ES modules, no build step, nothing from the internet.
// This file is the shell: API key bar, engine badge and health polling, and the router; each
// page is a module in pages/, what they share is in studio-ui.js, task-panel.js, api.js, dom.js
// and audio.js. All network access goes through api(), which adds the API key and turns the
// server's {"error": {...}} bodies into ApiError with a readable message.

import { api, session } from "./api.js";
import { $, $$, initTheme, renderEngineBadge, renderOfflineBadge, store } from "./dom.js";
import { initCharacters, showVoices } from "./pages/characters.js";
import { fillConversationVoices, initConversation } from "./pages/conversation.js";
import { initCreate } from "./pages/create.js";
import { fillStudioVoice, initStudio, selectStudioVoice, updateCounter } from "./pages/studio.js";
import { engineName, isFallback, loadVoices, onVoices, parseHash, showKeyBar, state, toast } from "./studio-ui.js";

session.apiKey = store.get("apiKey", "");

// ---------------------------------------------------------------- health + API key

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

// ---------------------------------------------------------------- start

async function main() {
  session.onAuthError = () => showKeyBar(true);
  // After every load of the voices, in this order: the cards, the studio's select, the conversation's.
  onVoices(showVoices);
  onVoices(fillStudioVoice);
  onVoices(fillConversationVoices);
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
