"""CSMGenerator: text (+ conversation context) -> Mimi codes -> 24 kHz audio, whole or streamed.

The prompt follows Sesame's reference: every position is a row of 33 columns (32 codebooks +
one text token) with a mask saying which columns are real. A segment is its text
``<bos>[{speaker}]{text}<eos>`` followed (for context turns) by its audio frames and one
all-zero frame, the end-of-audio marker. Generation appends frames until the model emits
an all-zero frame (EOS) or the length budget runs out.

Python owns the loop; each step is a fixed-shape call into ``generate.py``. On CUDA the
per-frame step can be compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from echoforge.csm import generate as G
from echoforge.csm.loader import Checkpoint, CheckpointError, load_checkpoint
from echoforge.engines.base import Segment
from echoforge.text import normalize_text, split_sentences

log = logging.getLogger("echoforge.csm")

SAMPLE_RATE = 24_000
FRAME_MS = 80  # one Mimi frame at 12.5 Hz
# Text longer than this is generated sentence-group by sentence-group, each piece fed back as context.
MAX_PIECE_CHARS = 300
# Per-piece frame cap when text is split: twice a slow speaking rate (15 chars/s) plus 2 s, so one
# piece that never emits EOS cannot eat the whole request's budget.
_CHARS_PER_S = 15.0
# Longest voice prompt (a saved voice's reference clip) fed to the model, in seconds; the engine
# sets ``generator.max_reference_s`` from ``csm.max_reference_s``. 15 s of clean speech carries a
# voice's timbre and prosody (Sesame's own prompts are short single utterances) and costs at most
# 189 of the 2048 positions, leaving room for text, 90 s of output and recent turns. 0/None = no limit.
MAX_REFERENCE_S = 15.0
# A voice prompt that cannot fit even alone is shortened, down to this many frames (2 s), before it is dropped.
_MIN_PROMPT_FRAMES = 25



@dataclass
class Request:
    """One generation request (the arguments of :meth:`CSMGenerator.generate`)."""

    text: str
    speaker: int = 0
    context: Sequence[Segment] = field(default_factory=list)
    max_audio_length_ms: float = 90_000
    temperature: float = 0.9
    topk: int = 50
    seed: int | None = None


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA > MPS > CPU. An explicit device this torch cannot use raises
    :class:`~echoforge.engines.base.EngineUnavailable` with one line saying why and what to do."""
    if str(device) != "auto":
        from echoforge.engines.base import EngineUnavailable

        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            if torch.version.cuda is None:
                raise EngineUnavailable(
                    f"device {str(device)!r} requested but this torch ({torch.__version__}) is a CPU-only build with no "
                    "CUDA; install a CUDA build (`pip install torch --index-url https://download.pytorch.org/whl/cu124`, "
                    "README 'GPU') or set device: auto / cpu"
                )
            raise EngineUnavailable(
                f"device {str(device)!r} requested but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
                "GPU; check `nvidia-smi`, the driver and CUDA_VISIBLE_DEVICES, or set device: auto / cpu"
            )
        if dev.type == "mps" and not (
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        ):
            raise EngineUnavailable(
                f"device 'mps' requested but this torch ({torch.__version__}) has no usable MPS (Apple GPU); "
                "set device: auto / cpu"
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere, unless told otherwise.

    ``exact`` means fp32 weights *and* exact fp32 math: it calls :func:`use_exact_math`
    (process-wide switches) and returns ``torch.float32``.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "exact":
        use_exact_math()
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, exact, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def use_exact_math() -> None:
    """Full-precision fp32 everywhere: no TF32 in matmuls (cuBLAS) or convolutions (cuDNN, Mimi).

    The switches are global to the process (torch has no per-module setting), so they also
    apply to anything else running on the GPU in it. Harmless on CPU.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class CSMGenerator:
    """Sesame CSM inference: exact, streaming, batched.

    Build with :meth:`from_pretrained`. ``generate`` returns a 1-D float tensor at 24 kHz,
    ``generate_codes`` the Mimi codes ``[frames, 32]`` (without the EOS frame), ``stream``
    yields audio chunks as frames arrive.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, ckpt: Checkpoint, codec: Any, device: torch.device, compile: bool = False, max_batch_size: int = 1,
                 static_shapes: bool | None = None):  # fmt: skip
        self.ckpt = ckpt
        self.model = ckpt.model
        self.codec = codec  # echoforge.csm.mimi.MimiCodec (fp32)
        self.device = device
        self.dtype = self.model.codebook0_head.weight.dtype
        self.num_codebooks = self.model.args.audio_num_codebooks
        self.window = self.model.args.backbone.max_seq_len
        self.frame_samples = int(round(SAMPLE_RATE * FRAME_MS / 1000))
        self.max_piece_chars = MAX_PIECE_CHARS
        self.model.setup_caches(max_batch_size, self.dtype)
        # Eager CPU/MPS path slices KV caches to the live length (known on the host, no sync);
        # the compiled CUDA path keeps full static shapes so one CUDA graph serves every step.
        # (`static_shapes=True` without compile runs the same static path eagerly, e.g. to test it on CPU.)
        use_compile = device.type == "cuda" and compile
        self.static = use_compile if static_shapes is None else static_shapes
        self._decode_frame = G.decode_frame
        if use_compile:
            # "reduce-overhead" = CUDA graphs: one ~1000-kernel frame step replays as a single launch.
            self._decode_frame = torch.compile(G.decode_frame, mode="reduce-overhead", fullgraph=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        *,
        codec: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        compile: bool = False,
        max_batch_size: int = 1,
        local_files_only: bool | None = None,
    ) -> CSMGenerator:
        """Load weights, tokenizer and the Mimi codec.

        Args:
            path_or_repo_id: local directory / weights file, or a hub repo id (cache first).
            device: ``auto`` (CUDA > MPS > CPU), ``cuda``, ``mps`` or ``cpu``.
            dtype: None/``auto`` (bf16 on CUDA, else fp32) or an explicit dtype. Mimi stays fp32.
            codec: Mimi repo/path; default: the codec bundled in a transformers checkpoint, else kyutai/mimi.
            tokenizer: tokenizer dir/repo; default: the checkpoint directory.
            compile: on CUDA, compile the per-frame step (CUDA graphs).
            max_batch_size: rows the KV caches are allocated for.
            local_files_only: never touch the network (default: cache first, then download).
        """
        dev = pick_device(device)
        ckpt = load_checkpoint(path_or_repo_id, dev, pick_dtype(dev, dtype), tokenizer, local_files_only)
        return cls(ckpt, _load_codec(ckpt, codec, dev, local_files_only), dev, compile, max_batch_size)

    # ------------------------------------------------------------------ prompt building

    def _text_rows(self, speaker: int, text: str) -> tuple[Tensor, Tensor]:
        ids = [
            self.ckpt.bos_id,
            *self.ckpt.tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False).ids,
            self.ckpt.eos_id,
        ]
        tokens = torch.zeros(len(ids), self.num_codebooks + 1, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        tokens[:, -1] = torch.tensor(ids)
        mask[:, -1] = True
        return tokens, mask

    def _audio_rows(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        # codes [F, K] plus the all-zero end-of-audio frame -> rows [F+1, K+1]
        frames = torch.cat([codes.cpu().long(), torch.zeros(1, self.num_codebooks, dtype=torch.long)])
        tokens = torch.zeros(frames.shape[0], self.num_codebooks + 1, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        tokens[:, :-1] = frames
        mask[:, :-1] = True
        return tokens, mask

    def encode_audio(self, audio: Any, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """Mimi codes ``[frames, 32]`` for audio (numpy or tensor) at ``sample_rate``.

        Multi-channel audio (``[T, C]`` or ``[C, T]``, C ≤ 8) is downmixed to mono first
        (:func:`echoforge.audio.to_mono_float32`), never flattened.
        """
        from echoforge.audio import resample, to_mono_float32

        audio = to_mono_float32(audio)
        if sample_rate != SAMPLE_RATE:
            audio = resample(audio, sample_rate, SAMPLE_RATE)
        with torch.inference_mode():
            return self.codec.encode(torch.from_numpy(audio)).long().cpu()

    def _reference_limit_s(self) -> float | None:
        limit = getattr(self, "max_reference_s", MAX_REFERENCE_S)
        return float(limit) if limit else None

    def prepare_segment(self, seg: Segment) -> Segment:
        """``seg`` with its audio as Mimi codes ``[F, 32]``; a pinned voice prompt is trimmed.

        A voice prompt (``seg.pinned``) longer than ``max_reference_s`` keeps its *beginning*,
        cut at a pause near the limit (see :func:`echoforge.audio.cut_at_pause`): a reference
        recording starts where its transcript starts, and speakers begin clean, whereas keeping
        the end would start mid-word with a transcript that no longer lines up. The transcript
        is shortened in proportion (at a word boundary), so text and audio still roughly match.
        One warning is logged per trimmed clip. Unpinned turns (generated or user speech) are
        never trimmed here; the window drops them whole when it is full.
        """
        audio = seg.audio
        if audio is None:
            return seg
        limit_s = self._reference_limit_s() if seg.pinned else None
        if _is_codes(audio):
            limit = None if limit_s is None else max(1, int(limit_s * 1000 // FRAME_MS))
            if limit is None or audio.shape[0] <= limit:
                return seg
            log.warning(
                "voice prompt is %.1f s long; keeping its first %.1f s (csm.max_reference_s)",
                audio.shape[0] * FRAME_MS / 1000, limit * FRAME_MS / 1000,
            )  # fmt: skip
            return replace(seg, text=_trim_transcript(seg.text, limit / audio.shape[0]), audio=audio[:limit])
        from echoforge.audio import cut_at_pause, resample, to_mono_float32

        wav = resample(to_mono_float32(audio), seg.sample_rate, SAMPLE_RATE)
        text = seg.text
        if limit_s is not None and wav.size > limit_s * SAMPLE_RATE:
            kept = cut_at_pause(wav, SAMPLE_RATE, limit_s)
            log.warning(
                "voice prompt is %.1f s long; keeping its first %.1f s, cut at a pause (csm.max_reference_s=%g)",
                wav.size / SAMPLE_RATE, kept.size / SAMPLE_RATE, limit_s,
            )  # fmt: skip
            text = _trim_transcript(text, kept.size / wav.size)
            wav = kept
        return replace(seg, text=text, audio=self.encode_audio(wav, SAMPLE_RATE), sample_rate=SAMPLE_RATE)

    def _segment_rows(self, seg: Segment) -> tuple[Tensor, Tensor]:
        seg = self.prepare_segment(seg)
        tokens, mask = self._text_rows(seg.speaker, normalize_text(seg.text))
        if seg.audio is None:
            return tokens, mask
        a_tok, a_mask = self._audio_rows(seg.audio)
        return torch.cat([tokens, a_tok]), torch.cat([mask, a_mask])

    def build_prompt(
        self, text: str, speaker: int, context: Sequence[Segment], max_frames: int
    ) -> tuple[Tensor, Tensor, int]:
        """Prompt rows ``[T, 33]`` + mask for ``text`` after ``context``, and the frame budget.

        The 2048-position window must hold context + text + generated frames. When it does
        not, the oldest *unpinned* context segments (earlier generated or user turns) are
        dropped first, with a warning; the voice prompt (``Segment.pinned``) stays at the
        start. Only when the pinned segments alone still do not fit are they shortened
        (down to 2 s each) or, failing that, dropped oldest first, again with a warning.
        Context never raises; text that cannot fit even alone raises ValueError.
        """
        gen_tok, gen_mask = self._text_rows(speaker, text)
        if gen_tok.shape[0] + 1 > self.window:
            raise ValueError(
                f"text is too long: {gen_tok.shape[0]} tokens, the model's window is {self.window}; split it"
            )
        frames = max(1, min(max_frames, self.window - gen_tok.shape[0]))
        budget = self.window - gen_tok.shape[0] - frames
        segs = [self.prepare_segment(s) for s in context]
        rows = [self._segment_rows(s) for s in segs]
        keep = list(range(len(segs)))

        def used() -> int:
            return sum(rows[i][0].shape[0] for i in keep)

        dropped = 0
        while used() > budget:
            victim = next((i for i in keep if not segs[i].pinned), None)
            if victim is None:
                break
            keep.remove(victim)
            dropped += 1
        if dropped:
            pinned = sum(1 for i in keep if segs[i].pinned)
            log.warning(
                "prompt exceeds the %d-token window: dropped the %d oldest context segment(s)%s",
                self.window, dropped, f", kept the voice prompt ({pinned} pinned)" if pinned else "",
            )  # fmt: skip
        if used() > budget:
            keep = self._fit_pinned(segs, rows, keep, budget)
        tokens = torch.cat([rows[i][0] for i in keep] + [gen_tok])
        mask = torch.cat([rows[i][1] for i in keep] + [gen_mask])
        return tokens, mask, frames

    def _fit_pinned(self, segs: list[Segment], rows: list[tuple[Tensor, Tensor]], keep: list[int],
                    budget: int) -> list[int]:  # fmt: skip
        """Shorten (then drop, oldest first) the remaining pinned segments until they fit ``budget``.

        Every voice prompt is cut to the same longest length ``L`` that fits (so with several
        speakers' prompts, each keeps as much as the others); ``rows`` is updated in place.
        """
        keep = list(keep)
        while keep:
            text_len = {i: rows[i][0].shape[0] - (segs[i].audio.shape[0] + 1 if segs[i].audio is not None else 0)
                        for i in keep}  # fmt: skip
            audio_len = {i: segs[i].audio.shape[0] if segs[i].audio is not None else None for i in keep}

            def size(cap: int) -> int:
                return sum(text_len[i] + (min(audio_len[i], cap) + 1 if audio_len[i] is not None else 0) for i in keep)

            longest = max((n for n in audio_len.values() if n is not None), default=0)
            cap = next((c for c in range(longest, _MIN_PROMPT_FRAMES - 1, -1) if size(c) <= budget), None)
            if cap is not None:
                for i in keep:
                    n = audio_len[i]
                    if n is not None and n > cap:
                        segs[i] = replace(segs[i], text=_trim_transcript(segs[i].text, cap / n), audio=segs[i].audio[:cap])
                        rows[i] = self._segment_rows(segs[i])
                log.warning(
                    "the voice prompt alone does not fit the %d-token window next to this text and its audio "
                    "budget: shortened it to %.1f s", self.window, cap * FRAME_MS / 1000,
                )  # fmt: skip
                return keep
            log.warning(
                "the voice prompt does not fit the %d-token window even at %.1f s: dropped one (%d left)",
                self.window, _MIN_PROMPT_FRAMES * FRAME_MS / 1000, len(keep) - 1,
            )  # fmt: skip
            keep.pop(0)
        return keep

    # ------------------------------------------------------------------ the frame loop

    @torch.inference_mode()
    def _frames(self, prompts: list[tuple[Tensor, Tensor]], max_frames: list[int], temperature: list[float],
                topk: list[int], seed: int | None) -> Iterator[tuple[Tensor, list[bool]]]:  # fmt: skip
        """Yield ``(frame [B, K] on CPU, done flags)`` per step until every row hit EOS or its budget.

        Rows are left-padded to a common length; each row keeps its own RoPE positions, so a
        row's result matches running it alone.
        """
        m, dev = self.model, self.device
        b = len(prompts)
        if b > m.max_batch_size:
            m.setup_caches(b, self.dtype)
        lens = [p[0].shape[0] for p in prompts]
        t = max(lens)
        budget = max(max_frames)
        if t + budget > self.window:
            budget = self.window - t
        tokens = torch.zeros(b, t, self.num_codebooks + 1, dtype=torch.long)
        tmask = torch.zeros(b, t, self.num_codebooks + 1, dtype=torch.bool)
        valid = torch.zeros(b, self.window, dtype=torch.bool)
        for i, (tok, msk) in enumerate(prompts):
            tokens[i, t - lens[i] :], tmask[i, t - lens[i] :] = tok, msk
            valid[i, t - lens[i] :] = True  # prompt columns plus every column generated later
        pad = torch.tensor([t - n for n in lens])
        rope_pos = (torch.arange(t)[None] - pad[:, None]).clamp_min(0)  # [B, T]
        tokens, tmask, valid, rope_pos = tokens.to(dev), tmask.to(dev), valid.to(dev), rope_pos.to(dev)
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed) if seed is not None else gen.seed()
        sampler = G.Sampler(
            torch.tensor(temperature, dtype=torch.float, device=dev),
            torch.tensor(topk, dtype=torch.long, device=dev), max(topk), gen,
        )  # fmt: skip
        padded = any(n != t for n in lens)
        eager_valid = valid if padded else None  # unpadded batches need no masks in eager mode
        h = G.prefill(m, tokens, tmask, rope_pos, valid if self.static else eager_valid, None if self.static else t)
        next_rope = torch.tensor(lens, device=dev)  # [B] RoPE position of each row's next frame
        ended = [False] * b
        columns = torch.arange(self.window, device=dev)  # slices of it are the per-step cache columns
        for step in range(budget):
            pos = t + step
            if self.static:
                frame, h = self._decode_frame(m, h, columns[pos : pos + 1], next_rope, valid, sampler)
                frame, h = frame.clone(), h.clone()  # CUDA-graph outputs are reused by the next replay
            else:
                frame = G.sample_codebooks(m, h, sampler)
                if step + 1 < budget:  # the last frame's backbone step would be wasted
                    h = G.backbone_step(m, frame, columns[pos : pos + 1], pos, next_rope, eager_valid)
            next_rope = next_rope + 1
            host = frame.cpu()
            eos = (host == 0).all(-1).tolist()  # the reference's end marker: an all-zero frame
            # ended[i]: row i's frame from this step is not part of its output (EOS now or earlier,
            # or its own budget is spent). Once ended, a row stays ended.
            ended = [ended[i] or eos[i] or step >= max_frames[i] for i in range(b)]
            yield host, ended
            if all(ended):
                return

    def _run(self, reqs: list[Request]) -> Iterator[tuple[Tensor, list[bool]]]:
        prompts, budgets = [], []
        for r in reqs:
            tok, msk, frames = self.build_prompt(
                normalize_text(r.text), r.speaker, r.context, _frames_for(r.max_audio_length_ms)
            )
            prompts.append((tok, msk))
            budgets.append(frames)
        yield from self._frames(prompts, budgets, [r.temperature for r in reqs], [r.topk for r in reqs], reqs[0].seed)

    def _codes_iter(self, req: Request) -> Iterator[Tensor]:
        """Frames ``[K]`` of one request, long text generated piece by piece with earlier pieces as context."""
        text = normalize_text(req.text)
        limit = self.max_piece_chars
        pieces = split_sentences(text, limit) if len(text) > limit else [text]
        # Encode (and trim a too-long voice prompt) once, not once per piece. build_prompt keeps the
        # pinned voice prompt and, when the window fills, drops the oldest pieces first.
        context = [self.prepare_segment(s) for s in req.context]
        left = _frames_for(req.max_audio_length_ms)
        for n, piece in enumerate(pieces):
            if left <= 0:
                break
            cap = left if len(pieces) == 1 else min(left, int((2 * len(piece) / _CHARS_PER_S + 2) * 1000 / FRAME_MS))
            sub = Request(piece, req.speaker, context, cap * FRAME_MS, req.temperature, req.topk,
                          None if req.seed is None else req.seed + n)  # fmt: skip
            got = []
            for frames, ended in self._run([sub]):
                if ended[0]:
                    break
                got.append(frames[0])
                yield frames[0]
            left -= len(got)
            if got:  # feed this piece back so the next one keeps the same voice
                context.append(Segment(req.speaker, piece, torch.stack(got)))

    # ------------------------------------------------------------------ public API

    def generate_codes(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), max_audio_length_ms: float = 90_000,
                       temperature: float = 0.9, topk: int = 50, seed: int | None = None) -> Tensor:  # fmt: skip
        """Mimi codes ``[frames, 32]`` (long, CPU) for ``text``, without the EOS frame."""
        frames = list(
            self._codes_iter(Request(text, speaker, list(context), max_audio_length_ms, temperature, topk, seed))
        )
        if not frames:
            return torch.zeros(0, self.num_codebooks, dtype=torch.long)
        return torch.stack(frames)

    def decode(self, codes: Tensor) -> Tensor:
        """Mimi-decode codes ``[frames, 32]`` -> 1-D float audio at 24 kHz."""
        if codes.shape[0] == 0:
            return torch.zeros(0)
        with torch.inference_mode():
            # 2048..2050 are CSM specials Mimi cannot decode; a trained model never emits them mid-speech.
            return self.codec.decode(codes.clamp(0, 2047)).float().reshape(-1).cpu()

    def generate(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), max_audio_length_ms: float = 90_000,
                 temperature: float = 0.9, topk: int = 50, seed: int | None = None) -> Tensor:  # fmt: skip
        """1-D float audio tensor at 24 kHz for ``text`` spoken by ``speaker`` after ``context``."""
        return self.decode(self.generate_codes(text, speaker, context, max_audio_length_ms, temperature, topk, seed))

    def stream(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), max_audio_length_ms: float = 90_000,
               temperature: float = 0.9, topk: int = 50, seed: int | None = None, first_chunk_frames: int = 2,
               chunk_frames: int = 8) -> Iterator[Tensor]:  # fmt: skip
        """Yield 1-D audio chunks: the first after ``first_chunk_frames`` frames, then every ``chunk_frames``.

        The Mimi decoder is stateful, so each chunk costs only its own frames.
        """
        dec = self.codec.streaming_decoder()
        pending: list[Tensor] = []
        want = first_chunk_frames
        req = Request(text, speaker, list(context), max_audio_length_ms, temperature, topk, seed)
        with torch.inference_mode():
            for frame in self._codes_iter(req):
                pending.append(frame)
                if len(pending) >= want:
                    yield dec.decode(torch.stack(pending).clamp(0, 2047)).float().reshape(-1).cpu()
                    pending, want = [], chunk_frames
            if pending:
                yield dec.decode(torch.stack(pending).clamp(0, 2047)).float().reshape(-1).cpu()

    def generate_batch(self, requests: Sequence[Request | dict], decode: bool = True) -> list[Tensor]:
        """Generate several requests in one forward pass per step (for the server).

        Each request must fit the window on its own (no long-text splitting here). Sampling
        uses one RNG for the batch (seeded by the first request's seed); greedy rows
        (temperature 0) give exactly what :meth:`generate` gives.

        Returns:
            Per request, audio (1-D float, 24 kHz) if ``decode`` else codes ``[frames, 32]``.
        """
        reqs = [r if isinstance(r, Request) else Request(**r) for r in requests]
        out: list[list[Tensor]] = [[] for _ in reqs]
        for frames, ended in self._run(reqs):
            for i in range(len(reqs)):
                if not ended[i]:
                    out[i].append(frames[i])
        codes = [torch.stack(f) if f else torch.zeros(0, self.num_codebooks, dtype=torch.long) for f in out]
        return [self.decode(c) for c in codes] if decode else codes


def _is_codes(audio: Any) -> bool:
    """Mimi codes ``[F, K]`` (an integer tensor), as opposed to audio samples."""
    return isinstance(audio, Tensor) and not audio.is_floating_point() and audio.ndim == 2


def _trim_transcript(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text`` (by characters), ending at a word boundary; at least one word.

    Used when a voice prompt's audio is cut: speech rate is roughly constant, so the kept share
    of the characters roughly matches the kept share of the audio.
    """
    words = text.split()
    if fraction >= 1 or len(words) <= 1:
        return text
    target = fraction * len(" ".join(words))
    kept, length = [], 0
    for w in words:
        if kept and length + 1 + len(w) > target:
            break
        length += len(w) + (1 if kept else 0)
        kept.append(w)
    return " ".join(kept)


def _frames_for(ms: float) -> int:
    return max(1, int(ms // FRAME_MS))


def _load_codec(
    ckpt: Checkpoint, codec: str | os.PathLike | None, device: torch.device, local_files_only: bool | None
) -> Any:
    """The Mimi codec: explicit path/repo > bundled in the checkpoint > kyutai/mimi. Always fp32."""
    from echoforge.csm.mimi import MimiCodec

    if codec is None and ckpt.codec_config and ckpt.codec_state:
        try:
            mimi = MimiCodec.from_state_dict(ckpt.codec_config, ckpt.codec_state, device=device)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{ckpt.path}: bundled Mimi codec does not load: {exc}") from exc
        ckpt.codec_state = None  # the codec owns its weights now; drop our reference
        return mimi
    src = codec or "kyutai/mimi"
    try:
        return MimiCodec.from_pretrained(str(src), device=str(device))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"could not load the Mimi codec from {src!r}: {exc}") from exc
