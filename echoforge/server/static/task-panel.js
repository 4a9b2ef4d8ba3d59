// The task flow shared by the studio and conversation pages: submit → poll GET /api/tasks/{id}
// → fetch the audio, with progress, cancel and the error box.

import { ApiError, api, fetchAudioUrl } from "./api.js";
import { $ } from "./dom.js";
import { cap, clearInvalid, fmtSeconds, markInvalid, setProgress, showError } from "./studio-ui.js";

/**
 * Poll GET /api/tasks/{id} until it finishes; calls onUpdate(task) on every poll.
 * Resolves with the final task; rejects with ApiError when it failed or was cancelled.
 */
export async function waitForTask(taskId, statusUrl, { onUpdate, signal }) {
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

export function describeTask(task, noun = "Generating") {
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
export class TaskPanel {
  /** `prefix`: the page's id prefix ("gen", "conv"); `blocked()`: true while the form must not be submitted. */
  constructor(prefix, { blocked = () => false } = {}) {
    this.p = prefix;
    this.blocked = blocked;
    this.controller = null;
    this.taskId = null;
    this.objectUrl = null;
  }
  el(name) { return $(`#${this.p}-${name}`); }
  busy(on) {
    this.running = on;
    const submit = this.el("submit");
    submit.disabled = on || this.blocked();
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
