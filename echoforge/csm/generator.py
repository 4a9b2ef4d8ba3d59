"""CSMGenerator, the thin public API: text (+ conversation context) -> Mimi codes -> 24 kHz audio.

Who owns what in ``echoforge.csm``:

* ``prompt.py`` — the prompt layout and builder (segments -> 33-column rows, voice prompt pinned,
  window fitting); also used by ``train/data.py``;
* ``sequence.py`` — one request's state; ``scheduler.py`` — the policy (admission, prefill rounds,
  handing frames out, ending pieces and rows) and its thread;
* ``runner.py`` — execution: the frame step (eager or compiled), buckets, warm-up, persistent
  per-slot tensors, padding, lagged read-back, prefill, prefix-cache copies;
* ``generate.py`` — the tensor functions (prefill, sampling, frame step); ``model.py`` — the network;
* this file — loading (:meth:`CSMGenerator.from_pretrained`) and the calls users make
  (``generate``, ``generate_codes``, ``stream``, ``generate_batch``, ``encode_audio``,
  ``prepare_segment``, ``build_prompt``), each a few lines over the above.

Every request goes through the device's one :class:`~echoforge.csm.scheduler.FrameScheduler`
(continuous batching). See ``docs/csm-runtime.md`` for the path of a request.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from echoforge.audio import resample, to_mono_float32
from echoforge.csm.loader import Checkpoint, CheckpointError, load_checkpoint
from echoforge.csm.mimi import MimiCodec
from echoforge.csm.mimi_batch import MimiBatcher
from echoforge.csm.prompt import MAX_REFERENCE_S, Prompt, PromptBuilder
from echoforge.csm.rates import FRAME_MS, SAMPLE_RATE
from echoforge.csm.runner import PREFIX_CACHE_MB, ModelRunner
from echoforge.csm.scheduler import MAX_PIECE_CHARS, FrameScheduler
from echoforge.engines.base import EngineUnavailable, Segment

log = logging.getLogger("echoforge.csm")

__all__ = ["FRAME_MS", "MAX_PIECE_CHARS", "MAX_REFERENCE_S", "SAMPLE_RATE", "CSMGenerator", "Request"]


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
                 static_shapes: bool | None = None, max_waiting: int = 32, prefill_chunk: int = 256,
                 prefix_cache_mb: float = PREFIX_CACHE_MB, batch_decode: bool | None = None, attention: str = "auto",
                 graphs: str = "auto"):  # fmt: skip
        self.ckpt = ckpt
        self.model = ckpt.model
        self.codec = codec  # echoforge.csm.mimi.MimiCodec (fp32)
        # Streams' Mimi chunks are decoded together: one call per chunk length for every stream
        # waiting, on the codec's device (the scheduler's), instead of one call per stream. Default:
        # on CUDA (one launch sequence for all rows instead of one per stream); on CPU it is a wash
        # (16 tiny streams: 1.43 / 0.97 s batched vs 1.21 / 1.08 s per stream in two runs, BENCHMARKS.md),
        # so each stream keeps decoding in its own thread there.
        if batch_decode is None:
            batch_decode = device.type == "cuda"
        # Compiled (CUDA graphs per rows bucket and chunk length, warmed by :meth:`warmup`) with the frame step.
        self.mimi_batcher = (MimiBatcher(codec, max_rows=max_batch_size, compile=device.type == "cuda" and compile)
                             if batch_decode else None)  # fmt: skip
        self.device = device
        self.dtype = self.model.codebook0_head.weight.dtype
        self.num_codebooks = self.model.args.audio_num_codebooks
        self.window = self.model.args.backbone.max_seq_len
        self.frame_samples = int(round(SAMPLE_RATE * FRAME_MS / 1000))
        self.prompts = PromptBuilder(ckpt.tokenizer, ckpt.bos_id, ckpt.eos_id, self.num_codebooks, self.window,
                                     self.encode_audio)  # fmt: skip
        # Eager CPU/MPS path slices KV caches to the live length (known on the host, no sync);
        # the compiled CUDA path keeps full static shapes so one CUDA graph per batch-size bucket
        # serves every step. (`static_shapes=True` without compile runs the static path eagerly.)
        self._compile = device.type == "cuda" and compile
        self._static = self._compile if static_shapes is None else static_shapes
        self._prefix_cache_mb = prefix_cache_mb
        self._runner_options = dict(attention=attention, graphs=graphs)  # ModelRunner's static-step choices
        self._max_piece_chars = MAX_PIECE_CHARS
        # Every request goes through the one scheduler of this device (continuous batching).
        self.scheduler = self.make_scheduler(max_batch_size, max_waiting, prefill_chunk)

    def make_scheduler(self, max_rows: int, max_waiting: int = 32, prefill_chunk: int = 256, lag: bool | None = None,
                       prefix_cache_mb: float | None = None) -> FrameScheduler:  # fmt: skip
        """A scheduler (and runner) of its own over this generator's model and prompts (tests, benchmarks)."""
        runner = ModelRunner(self.model, self.device, max_rows, static=self._static, compile=self._compile, lag=lag,
                             prefix_cache_mb=self._prefix_cache_mb if prefix_cache_mb is None else prefix_cache_mb,
                             **self._runner_options)  # fmt: skip
        return FrameScheduler(runner, self.prompts, max_waiting, prefill_chunk, self._max_piece_chars)

    @property
    def runner(self) -> ModelRunner:
        return self.scheduler.runner

    @property
    def static(self) -> bool:
        """The fixed-shape frame step (what ``compile=True`` selects on CUDA)."""
        return self._static

    @static.setter
    def static(self, value: bool) -> None:
        self._static = value
        self.scheduler.runner.static = value

    @property
    def max_piece_chars(self) -> int:
        return self._max_piece_chars

    @max_piece_chars.setter
    def max_piece_chars(self, value: int) -> None:
        self._max_piece_chars = value
        self.scheduler.max_piece_chars = value

    @property
    def max_reference_s(self) -> float | None:
        """Voice prompts longer than this are trimmed (``csm.max_reference_s``)."""
        return self.prompts.max_reference_s

    @max_reference_s.setter
    def max_reference_s(self, value: float | None) -> None:
        self.prompts.max_reference_s = value

    def warmup(self, chunk_frames: Sequence[int] | None = None) -> float:
        """Run (and on CUDA capture) the sampled frame step once per batch-size bucket, and the Mimi batcher's
        compiled decode once per bucket and chunk length (``chunk_frames``: the engine's first and later
        chunk lengths; default 2 and 8); returns seconds. (The eager paths have nothing to warm.)"""
        # CUDA graphs are recorded per thread: the frame step's on the scheduler's, Mimi's on the batcher's.
        if chunk_frames and self.mimi_batcher is not None:
            self.mimi_batcher.chunk_frames = sorted(set(chunk_frames), reverse=True)
        t = self.scheduler.call(self.runner.warmup) if self.static else 0.0
        return t + (self.mimi_batcher.warmup() if self.mimi_batcher is not None else 0.0)

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
        prefix_cache_mb: float = PREFIX_CACHE_MB,
        batch_decode: bool | None = None,
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
            prefix_cache_mb: memory for the KV of voice prompts, computed once per voice (0 = off).
            local_files_only: never touch the network (default: cache first, then download).
            batch_decode: streams' Mimi chunks are decoded together (one call per chunk length for
                every waiting stream) in one thread, instead of each stream decoding alone (default: on CUDA).
        """
        dev = pick_device(device)
        ckpt = load_checkpoint(path_or_repo_id, dev, pick_dtype(dev, dtype), tokenizer, local_files_only)
        return cls(ckpt, _load_codec(ckpt, codec, dev, local_files_only), dev, compile, max_batch_size,
                   max_waiting=max_waiting, prefill_chunk=prefill_chunk, prefix_cache_mb=prefix_cache_mb,
                   batch_decode=batch_decode)  # fmt: skip

    # ------------------------------------------------------------------ prompts (prompt.py)

    def encode_audio(self, audio: Any, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """Mimi codes ``[frames, 32]`` for audio (numpy or tensor) at ``sample_rate``.

        Multi-channel audio (``[T, C]`` or ``[C, T]``, C ≤ 8) is downmixed to mono first
        (:func:`echoforge.audio.to_mono_float32`), never flattened.
        """
        audio = to_mono_float32(audio)
        if sample_rate != SAMPLE_RATE:
            audio = resample(audio, sample_rate, SAMPLE_RATE)
        with torch.inference_mode():
            return self.codec.encode(torch.from_numpy(audio)).long().cpu()

    def prepare_segment(self, seg: Segment) -> Segment:
        """``seg`` with its audio as Mimi codes, a long voice prompt trimmed (:meth:`PromptBuilder.prepare_segment`)."""
        return self.prompts.prepare_segment(seg)

    def build_prompt(self, text: str, speaker: int, context: Sequence[Segment], max_frames: int) -> Prompt:
        """The prompt for ``text`` after ``context`` (:meth:`PromptBuilder.build`)."""
        return self.prompts.build(text, speaker, context, max_frames)

    def _codes_iter(self, req: Request) -> Iterator[Tensor]:
        """Frames ``[K]`` of one request from the device's scheduler (cancelled when closed early)."""
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

        The Mimi decoder is stateful, so each chunk costs only its own frames. Decoding runs while
        the scheduler generates the next frames: in the generator's Mimi batcher (one call for the
        chunks of every stream waiting; on CUDA on a side stream of its own, so it overlaps with the
        frame graphs instead of queueing behind them), or with ``batch_decode=False`` in the caller's thread.
        """
        req = Request(text, speaker, list(context), max_audio_length_ms, temperature, topk, seed, should_stop)
        yield from self._decode_chunks(self._codes_iter(req), first_chunk_frames, chunk_frames)

    def submit_stream(self, text: str, speaker: int = 0, context: Sequence[Segment] = (), max_audio_length_ms: float = 90_000,
                      temperature: float = 0.9, topk: int = 50, seed: int | None = None, first_chunk_frames: int = 2,
                      chunk_frames: int = 8, should_stop: Callable[[], bool] | None = None) -> Iterator[Tensor]:  # fmt: skip
        """:meth:`stream`, admitted now: the scheduler takes the request (or raises
        :class:`~echoforge.csm.scheduler.SchedulerBusy`) before this returns the chunk iterator."""
        req = Request(text, speaker, list(context), max_audio_length_ms, temperature, topk, seed, should_stop)
        return self._decode_chunks(iter(self.scheduler.submit(req)), first_chunk_frames, chunk_frames)

    def _decode_chunks(self, frames: Iterator[Tensor], first_chunk_frames: int, chunk_frames: int) -> Iterator[Tensor]:
        pending: list[Tensor] = []
        want = first_chunk_frames
        if self.mimi_batcher is not None:  # with every other stream's waiting chunk, in the batcher's thread
            dec = self.mimi_batcher.decoder()

            def decode(frames: list[Tensor]) -> Tensor:
                return dec.decode(torch.stack(frames).clamp(0, 2047)).reshape(-1)
        else:
            dec = self.codec.streaming_decoder()
            side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

            def decode(frames: list[Tensor]) -> Tensor:
                with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                    return dec.decode(torch.stack(frames).clamp(0, 2047)).float().reshape(-1).cpu()

        try:
            with torch.inference_mode():
                for frame in frames:
                    pending.append(frame)
                    if len(pending) >= want:
                        yield decode(pending)
                        pending, want = [], chunk_frames
                if pending:
                    yield decode(pending)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # a consumer that stops early cancels the row

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


def _load_codec(
    ckpt: Checkpoint, codec: str | os.PathLike | None, device: torch.device, local_files_only: bool | None
) -> Any:
    """The Mimi codec: explicit path/repo > bundled in the checkpoint > kyutai/mimi. Always fp32."""
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
