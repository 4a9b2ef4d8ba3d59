// Audio helpers: 16-bit WAV encoding (for streamed PCM and browser recordings), and the one
// streaming PCM player (the studio's streamed generation and the agent page's replies).

/** Int16Array chunks of mono PCM → a WAV Blob. */
export function wavFromPcm16(chunks, sampleRate) {
  const samples = chunks.reduce((n, c) => n + c.length, 0);
  const buf = new ArrayBuffer(44 + samples * 2);
  const dv = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) dv.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); dv.setUint32(4, 36 + samples * 2, true); str(8, "WAVE");
  str(12, "fmt "); dv.setUint32(16, 16, true); dv.setUint16(20, 1, true); dv.setUint16(22, 1, true);
  dv.setUint32(24, sampleRate, true); dv.setUint32(28, sampleRate * 2, true); dv.setUint16(32, 2, true); dv.setUint16(34, 16, true);
  str(36, "data"); dv.setUint32(40, samples * 2, true);
  let off = 44;
  for (const c of chunks) { new Int16Array(buf, off, c.length).set(c); off += c.length * 2; }
  return new Blob([buf], { type: "audio/wav" });
}

/** Decode any recorded blob and re-encode it as 16-bit mono WAV, which every server accepts. */
export async function toWav(blob) {
  const ctx = new (window.AudioContext || window.webkitAudioContext)();
  try {
    const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
    const mono = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const d = audio.getChannelData(c);
      for (let i = 0; i < d.length; i++) mono[i] += d[i] / audio.numberOfChannels;
    }
    const ints = new Int16Array(mono.length);
    for (let i = 0; i < mono.length; i++) ints[i] = Math.max(-1, Math.min(1, mono[i])) * 32767;
    return wavFromPcm16([ints], audio.sampleRate);
  } finally {
    ctx.close();
  }
}

/**
 * Plays mono PCM s16le as it arrives: each chunk is scheduled with Web Audio right after the
 * previous one (never earlier than `lead` seconds from now), so chunks play gapless.
 * A frame may split a sample: decode() carries the odd byte to the next frame.
 * stop() silences everything scheduled at once (barge-in, interrupt, pause).
 */
export class PcmPlayer {
  /** `context`: the AudioContext to play on (the agent's microphone one); a new one when omitted. */
  constructor({ context = null, sampleRate = 24000, lead = 0.05 } = {}) {
    this.ctx = context || new (window.AudioContext || window.webkitAudioContext)();
    this.sampleRate = sampleRate;
    this.lead = lead;
    this.nextTime = 0;
    this.sources = [];
    this.leftover = null; // a split byte between frames
  }

  /** An ArrayBuffer frame → Int16Array samples (null when it holds no whole sample). */
  decode(data) {
    let bytes = new Uint8Array(data);
    if (this.leftover) {
      const joined = new Uint8Array(this.leftover.length + bytes.length);
      joined.set(this.leftover);
      joined.set(bytes, this.leftover.length);
      bytes = joined;
      this.leftover = null;
    }
    if (bytes.length % 2) { this.leftover = bytes.slice(-1); bytes = bytes.slice(0, -1); }
    if (!bytes.length) return null;
    return new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  }

  /** Schedule Int16Array samples after what is already queued. */
  play(ints) {
    if (!ints || !ints.length) return;
    const ctx = this.ctx;
    const buffer = ctx.createBuffer(1, ints.length, this.sampleRate);
    const ch = buffer.getChannelData(0);
    for (let i = 0; i < ints.length; i++) ch[i] = ints[i] / 32768;
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
    this.nextTime = Math.max(this.nextTime, ctx.currentTime + this.lead);
    src.start(this.nextTime);
    this.nextTime += buffer.duration;
    this.sources.push(src);
    src.onended = () => { this.sources = this.sources.filter((s) => s !== src); };
  }

  /** decode() then play(); returns the samples (or null). */
  push(data) {
    const ints = this.decode(data);
    this.play(ints);
    return ints;
  }

  /** Seconds of scheduled audio still to play. */
  remaining() { return Math.max(0, this.nextTime - this.ctx.currentTime); }

  /** Stop everything scheduled now; the next chunk starts `lead` from then. */
  stop() {
    for (const s of this.sources) { try { s.stop(); } catch { /* already stopped */ } }
    this.sources = [];
    this.nextTime = 0;
    this.leftover = null;
  }

  /** Close the AudioContext (the agent page closes its own, shared with the microphone). */
  close() { return this.ctx.close(); }
}
