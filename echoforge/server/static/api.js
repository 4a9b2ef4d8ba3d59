// The one way the studio talks to the server: adds the API key, and turns the server's
// {"error": {"message", "type", "code"}} bodies (and FastAPI's {"detail": ...}) into ApiError
// with a message a person can act on (auth, queue full with Retry-After, validation).

/** Set by the app: the API key to send, and what to do when the server refuses it. */
export const session = { apiKey: "", onAuthError: () => {} };

export class ApiError extends Error {
  constructor(message, { status = 0, type = "", code = "", retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function authHeaders() {
  return session.apiKey ? { Authorization: `Bearer ${session.apiKey}` } : {};
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
      return loc ? `${loc}: ${d.msg}` : d.msg;
    }).join("; ");
  }
  return "";
}

async function errorFromResponse(res) {
  let body = null;
  try { body = await res.clone().json(); } catch { /* not JSON */ }
  const err = body && typeof body.error === "object" ? body.error : {};
  let message = messageFromBody(body) || `${res.status} ${res.statusText || "error"}`.trim();
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
  return new ApiError(message, { status: res.status, type: err.type, code: err.code, retryAfter });
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
