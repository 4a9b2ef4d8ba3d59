// Small DOM and storage helpers shared by the studio's modules.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Create an element: h("a", {href: "#", class: "x"}, "text", child). No innerHTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const store = {
  get(key, fallback) {
    try {
      const raw = localStorage.getItem(`echoforge.${key}`);
      return raw === null ? fallback : JSON.parse(raw);
    } catch { return fallback; }
  },
  set(key, value) {
    try { localStorage.setItem(`echoforge.${key}`, JSON.stringify(value)); } catch { /* quota or disabled */ }
  },
  remove(key) {
    try { localStorage.removeItem(`echoforge.${key}`); } catch { /* disabled */ }
  },
};

// ---------------------------------------------------------------- theme (studio and agent page)

function effectiveTheme() {
  const set = document.documentElement.dataset.theme;
  if (set === "dark" || set === "light") return set;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function syncThemeButton(btn) {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  btn.setAttribute("aria-label", `Switch to ${next} mode`);
  btn.title = `Switch to ${next} mode`;
}

/** Wire a theme toggle button: flips light/dark, saved for theme-init.js to apply before first paint. */
export function initTheme(btn = $("#theme-toggle")) {
  btn.addEventListener("click", () => {
    const next = effectiveTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem("echoforge.theme", next); } catch { /* disabled */ }
    syncThemeButton(btn);
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => syncThemeButton(btn));
  syncThemeButton(btn);
}

// ---------------------------------------------------------------- engine badge (studio and agent page)

/** The header badge for a /api/health body: "CSM engine", "<name> · fallback engine (not CSM)" or,
 * for a tiny test checkpoint, "<name> · smoke-test model (not CSM-1B)". */
export function renderEngineBadge(badge, health) {
  const eng = health?.engine || {};
  const name = eng.name || "unknown";
  if (eng.smoke_test) {
    badge.dataset.state = "fallback";
    badge.replaceChildren(h("span", { class: "long" }, `${name} · smoke-test model (not CSM-1B)`),
      h("span", { class: "short" }, `${name} · smoke test`));
  } else if (eng.is_fallback) {
    badge.dataset.state = "fallback";
    badge.replaceChildren(h("span", { class: "long" }, `${name} · fallback engine (not CSM)`),
      h("span", { class: "short" }, `${name} · fallback`));
  } else {
    badge.dataset.state = "ok";
    badge.textContent = name === "csm" ? "CSM engine" : `${name} engine`;
  }
  badge.title = [eng.description, eng.model && `model: ${eng.model}`, eng.device && `device: ${eng.device}`,
    eng.sample_rate && `${eng.sample_rate} Hz`].filter(Boolean).join(" · ");
}

/** The header badge while the server cannot be reached. */
export function renderOfflineBadge(badge, message = "") {
  badge.dataset.state = "offline";
  badge.textContent = "Server offline";
  badge.title = message;
}
