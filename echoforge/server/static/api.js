// The one way the studio talks to the server: adds the API key, and turns the server's
// {"error": {"message", "type", "code"}} bodies (and FastAPI's {"detail": ...}) into ApiError
// with a message a person can act on (auth, queue full with Retry-After, validation).

/** Set by the app: the API key to send, and what to do when the server refuses it. */
export const session = { apiKey: "", onAuthError: () => {} };

export class ApiError extends Error {
  constructor(message, { status = 0, type = "", code = "", retryAfter = null, param = null, body = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.retryAfter = retryAfter;
    this.param = param;
    this.body = body;
  }
}

function authHeaders() {
  return session.apiKey ? { Authorization: `Bearer ${session.apiKey}` } : {};
}

const FIELD_LABELS = { text: "Text", input: "Text", voice: "Character", name: "Name", audio: "Audio clip",
  transcript: "Transcript", seed: "Seed", temperature: "Temperature", topk: "Top-k", speed: "Speed",
  format: "Format", turns: "Script", context: "Context", description: "Description" };

/** "turns.3.text" → "Turn 4 text"; "name" → "Name" (1-based, in the page's words). */
export function humanParam(param) {
  const parts = String(param || "").split(".").filter((p) => p !== "body");
  if (!parts.length) return "";
  const words = [];
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    if (/^\d+$/.test(p)) continue;
    const next = parts[i + 1];
    if (next !== undefined && /^\d+$/.test(next)) {
      const noun = p === "turns" ? "Turn" : p === "context" ? "Context turn" : (FIELD_LABELS[p] || p);
      words.push(`${noun} ${Number(next) + 1}`);
    } else {
      words.push(words.length ? (FIELD_LABELS[p] || p).toLowerCase() : (FIELD_LABELS[p] || p));
    }
  }
  return words.join(" ");
}

/** Raw "turns.3.text: msg" prefixes and "(and 1 more problem(s))" tails in plain words. */
function humanMessage(message) {
  return String(message)
    .replace(/^((?:body\.)?[a-z_]+(?:\.\d+)?(?:\.[a-z_]+)*): /i, (_, loc) => `${humanParam(loc)}: `)
    .replace(/:?\s*Field required/g, " is required")
    .replace(/\s*\(and (\d+) more problem\(s\)\)/, (_, n) => ` (and ${n} more ${n === "1" ? "problem" : "problems"})`);
}

/** Pull a human message out of any error body the server might send. */
function messageFromBody(body) {
  if (!body || typeof body !== "object") return "";
  const e = body.error;
  if (e && typeof e === "object" && e.message) return String(e.message);
  if (typeof e === "string") return e;
  if (typeof body.message === "string") return body.message;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) {
    // FastAPI's default validation shape: [{loc: [...], msg}]
    return body.detail.map((d) => {
      const loc = (d.loc || []).filter((p) => p !== "body").join(".");
      return loc ? `${humanParam(loc)}: ${d.msg}` : d.msg;
    }).join("; ");
  }
  return "";
}

async function errorFromResponse(res) {
  let body = null;
  try { body = await res.clone().json(); } catch { /* not JSON */ }
  const err = body && typeof body.error === "object" ? body.error : {};
  let message = humanMessage(messageFromBody(body) || `${res.status} ${res.statusText || "error"}`.trim());
  let param = typeof err.param === "string" ? err.param : null;
  if (!param && Array.isArray(body?.detail) && body.detail[0]?.loc) param = body.detail[0].loc.filter((p) => p !== "body").join(".");
  const retryAfter = res.headers.get("Retry-After");
  if (res.status === 401 || res.status === 403) {
    message = session.apiKey
      ? `The API key was rejected (${message}). Check the key and save it again.`
      : `This server requires an API key (${message}). Enter it at the top of the page.`;
    session.onAuthError();
  } else if (res.status === 429 || res.status === 503) {
    const wait = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again shortly.";
    message = `${res.status === 429 ? "The server is busy" : "The server is unavailable"}: ${message}.${wait}`.replace("..", ".");
  }
  return new ApiError(message, { status: res.status, type: err.type, code: err.code, retryAfter, param, body });
}

export async function api(path, { method = "GET", json, form, signal, raw = false } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("Cannot reach the EchoForge server. Is it still running?");
  }
  if (!res.ok) throw await errorFromResponse(res);
  if (raw) return res;
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

/** Fetch audio with auth and return an object URL (audio elements cannot send headers). */
export async function fetchAudioUrl(path, signal) {
  const res = await api(path, { raw: true, signal });
  const blob = await res.blob();
  return { url: URL.createObjectURL(blob), blob };
}
