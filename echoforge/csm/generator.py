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

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from echoforge.csm import generate as G
from echoforge.csm.loader import Checkpoint, CheckpointError, load_checkpoint
from echoforge.csm.scheduler import BUCKETS, FRAME_MS, FrameScheduler, buckets
from echoforge.engines.base import Segment
from echoforge.text import normalize_text

log = logging.getLogger("echoforge.csm")

SAMPLE_RATE = 24_000
# Text longer than this is generated sentence-group by sentence-group, each piece fed back as context.
MAX_PIECE_CHARS = 300
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
    should_stop: Callable[[], bool] | None = None  # polled every frame: True drops the row


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
                 static_shapes: bool | None = None, max_waiting: int = 32, prefill_chunk: int = 256):  # fmt: skip
        self.ckpt = ckpt
        self.model = ckpt.model
        self.codec = codec  # echoforge.csm.mimi.MimiCodec (fp32)
        self.device = device
        self.dtype = self.model.codebook0_head.weight.dtype
        self.num_codebooks = self.model.args.audio_num_codebooks
        self.window = self.model.args.backbone.max_seq_len
        self.frame_samples = int(round(SAMPLE_RATE * FRAME_MS / 1000))
        self.max_piece_chars = MAX_PIECE_CHARS
        # Eager CPU/MPS path slices KV caches to the live length (known on the host, no sync);
        # the compiled CUDA path keeps full static shapes so one CUDA graph per batch-size bucket
        # serves every step. (`static_shapes=True` without compile runs the static path eagerly.)
        use_compile = device.type == "cuda" and compile
        self.static = use_compile if static_shapes is None else static_shapes
        self._decode_frame = G.decode_frame
        if use_compile:
            # "reduce-overhead" = CUDA graphs: the ~1000-kernel sampled frame replays as one launch.
            # fullgraph: sampling is pure tensor code (counter-based RNG), nothing may break the graph.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(BUCKETS))
            self._decode_frame = torch.compile(G.decode_frame, mode="reduce-overhead", fullgraph=True, dynamic=False)
        # Every request goes through the one scheduler of this device (continuous batching).
        self.scheduler = FrameScheduler(self, max_batch_size, max_waiting, prefill_chunk)

    def warmup(self) -> float:
        """Run (and on CUDA capture) the sampled frame step once per batch-size bucket; returns seconds.

        Sampled, not greedy: that is the path real requests take, so nothing compiles on a request.
        """
        if not self.static:  # the eager path has nothing to compile or capture
            return 0.0
        return self.scheduler.call(self._warmup)  # CUDA graphs are recorded per thread: record on the scheduler's

    def _warmup(self) -> float:
        import time

        t0 = time.perf_counter()
        m, dev = self.model, self.device
        with torch.inference_mode():
            for b in buckets(self.scheduler.max_rows):
                h = torch.zeros(b, m.args.backbone.dim, dtype=self.dtype, device=dev)
                pos = torch.zeros(b, dtype=torch.long, device=dev)
                sampler = G.Sampler(torch.full((b,), 0.9, device=dev), torch.full((b,), 50, device=dev),
                                    torch.zeros(b, dtype=torch.long, device=dev), pos.clone())  # fmt: skip
                for _ in range(3):  # cudagraph trees record on the 2nd/3rd call
                    self._decode_frame(m, h, pos, sampler)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

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
        max_waiting: int = 32,
        prefill_chunk: int = 256,
    ) -> CSMGenerator:
        """Load weights, tokenizer and the Mimi codec.

        Args:
            path_or_repo_id: local directory / weights file, or a hub repo id (cache first).
            device: ``auto`` (CUDA > MPS > CPU), ``cuda``, ``mps`` or ``cpu``.
            dtype: None/``auto`` (bf16 on CUDA, else fp32), ``exact`` (fp32 weights and exact fp32 math: TF32 off;
                token-exact with transformers) or an explicit dtype. Mimi stays fp32.
            codec: Mimi repo/path; default: the codec bundled in a transformers checkpoint, else kyutai/mimi.
            tokenizer: tokenizer dir/repo; default: the checkpoint directory.
            compile: on CUDA, compile the per-frame step (CUDA graphs).
            max_batch_size: KV-cache slots = streams decoded together by the scheduler.
            max_waiting: requests that may wait for a slot before submissions are refused.
            prefill_chunk: prompt positions prefilled between two frames of running streams.
            local_files_only: never touch the network (default: cache first, then download).
        """
        dev = pick_device(device)
        ckpt = load_checkpoint(path_or_repo_id, dev, pick_dtype(dev, dtype), tokenizer, local_files_only)
        return cls(ckpt, _load_codec(ckpt, codec, dev, local_files_only), dev, compile, max_batch_size,
                   max_waiting=max_waiting, prefill_chunk=prefill_chunk)

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
            longest = max((n for n in audio_len.values() if n is not None), default=0)
            cap = next((c for c in range(longest, _MIN_PROMPT_FRAMES - 1, -1)
                        if _pinned_size(text_len, audio_len, c) <= budget), None)  # fmt: skip
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

    def _codes_iter(self, req: Request) -> Iterator[Tensor]:
        """Frames ``[K]`` of one request from the device's scheduler (cancelled when closed early).

        Long text is split into pieces there; each piece continues in the same KV slot, so the
        voice prompt and earlier pieces stay context (see :mod:`echoforge.csm.scheduler`).
        """
        yield from self.scheduler.submit(req)

    # ------------------------------------------------------------------ public API

    def generate_codes(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), max_audio_length_ms: float = 90_000,
                       temperature: float = 0.9, topk: int = 50, seed: int | None = None,
                       should_stop: Callable[[], bool] | None = None) -> Tensor:  # fmt: skip
        """Mimi codes ``[frames, 32]`` (long, CPU) for ``text``, without the EOS frame."""
        frames = list(self._codes_iter(
            Request(text, speaker, list(context), max_audio_length_ms, temperature, topk, seed, should_stop)
        ))  # fmt: skip
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
                 temperature: float = 0.9, topk: int = 50, seed: int | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Tensor:  # fmt: skip
        """1-D float audio tensor at 24 kHz for ``text`` spoken by ``speaker`` after ``context``."""
        return self.decode(
            self.generate_codes(text, speaker, context, max_audio_length_ms, temperature, topk, seed, should_stop)
        )

    def stream(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), max_audio_length_ms: float = 90_000,
               temperature: float = 0.9, topk: int = 50, seed: int | None = None, first_chunk_frames: int = 2,
               chunk_frames: int = 8, should_stop: Callable[[], bool] | None = None) -> Iterator[Tensor]:  # fmt: skip
        """Yield 1-D audio chunks: the first after ``first_chunk_frames`` frames, then every ``chunk_frames``.

        The Mimi decoder is stateful, so each chunk costs only its own frames. Decoding runs in
        the caller's thread while the scheduler generates the next frames; on CUDA it runs on a
        side stream of its own, so it overlaps with the frame graphs instead of queueing behind them.
        """
        dec = self.codec.streaming_decoder()
        pending: list[Tensor] = []
        want = first_chunk_frames
        req = Request(text, speaker, list(context), max_audio_length_ms, temperature, topk, seed, should_stop)
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

        def decode(frames: list[Tensor]) -> Tensor:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                return dec.decode(torch.stack(frames).clamp(0, 2047)).float().reshape(-1).cpu()

        with torch.inference_mode():
            for frame in self._codes_iter(req):
                pending.append(frame)
                if len(pending) >= want:
                    yield decode(pending)
                    pending, want = [], chunk_frames
            if pending:
                yield decode(pending)

    def generate_batch(self, requests: Sequence[Request | dict], decode: bool = True) -> list[Tensor]:
        """Several requests at once: all are submitted to the scheduler and decode frame by frame together.

        Each row keeps its own temperature, top-k and seed, so every result equals the same
        request run alone.

        Returns:
            Per request, audio (1-D float, 24 kHz) if ``decode`` else codes ``[frames, 32]``.
        """
        reqs = [r if isinstance(r, Request) else Request(**r) for r in requests]
        streams = [self.scheduler.submit(r) for r in reqs]
        codes = []
        for st in streams:
            frames = list(st)
            codes.append(torch.stack(frames) if frames else torch.zeros(0, self.num_codebooks, dtype=torch.long))
        return [self.decode(c) for c in codes] if decode else codes


def _pinned_size(text_len: dict[int, int], audio_len: dict[int, int | None], cap: int) -> int:
    """Positions the pinned segments take with each one's audio cut to ``cap`` frames (+ its EOS frame)."""
    return sum(t + (min(audio_len[i], cap) + 1 if audio_len[i] is not None else 0) for i, t in text_len.items())


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
