// Audio helpers: 16-bit WAV encoding (for streamed PCM and browser recordings).

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
