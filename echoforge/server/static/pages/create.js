// Create voice page (#/create): upload or record a clip, checked against the server's limits,
// and POST it as a new character; a transcript the server heard can be corrected.

import { ApiError, api } from "../api.js";
import { toWav } from "../audio.js";
import { $, h } from "../dom.js";
import { clearInvalid, fmtSeconds, loadVoices, markInvalid, showError, state } from "../studio-ui.js";

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

export function initCreate() {
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
