"""The ``csm`` engine: :class:`CSMGenerator` behind the :class:`TTSEngine` protocol.

Adds what the generator leaves to its caller: settings (device, dtype, compile, chunk sizes),
the watermark, numpy output, and a fail-fast load (a missing model must never stall start-up
waiting on an unreachable hub).

The generator, loader and hub are imported inside the methods that use them: this module is
what the engine registry, ``echoforge engines`` and ``doctor`` import to describe CSM, and it
loads in ~0.15 s, where the generator (torch, transformers) takes ~1 s (measured on the CI CPU).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from echoforge.audio import TempoStretcher, change_tempo
from echoforge.csm.rates import SAMPLE_RATE
from echoforge.engines.base import BaseEngine, EngineUnavailable, Segment, SynthesisRequest, VoiceInfo

if TYPE_CHECKING:
    from echoforge.config import Settings
    from echoforge.csm.generator import CSMGenerator

log = logging.getLogger("echoforge.csm")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to the Hugging Face endpoint within ``timeout`` seconds?"""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


# Below this a CSM checkpoint cannot be csm-1b (~1.55 B): it is a smoke-test model.
SMOKE_TEST_MAX_PARAMS = 300_000_000


class CSMEngine(BaseEngine):
    """Sesame CSM-1B as an EchoForge engine (24 kHz, streaming, conversation context)."""

    name = "csm"
    is_fallback = False
    sample_rate = SAMPLE_RATE
    description = "Sesame CSM-1B conversational speech model"

    def __init__(
        self,
        generator: CSMGenerator,
        model: str = "",
        watermark: bool = True,
        watermark_key: str | None = None,
        first_chunk_frames: int = 2,
        chunk_frames: int = 8,
    ):
        self.generator = generator
        self.model = model
        self.device = str(generator.device)
        self.watermark = watermark
        self.watermark_key = watermark_key
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        # csm-1b has ~1.55 B parameters (1 B backbone + 100 M decoder); a checkpoint far smaller is
        # a test model (`echoforge data tiny-model`, random weights): say so wherever the engine shows.
        params = sum(p.numel() for p in generator.model.parameters())
        if params < SMOKE_TEST_MAX_PARAMS:
            self.smoke_test = True
            self.description = (
                f"CSM smoke-test model ({params / 1e6:.1f} M parameters, not CSM-1B): "
                "test weights that speak noise, for trying the pipeline only"
            )

    @classmethod
    def probe(cls, settings: Settings, check_device: bool = True):
        """Would ``from_settings`` load? Checks device, cache/path, tokenizer and weight headers
        (names, shapes) without reading tensors or touching the network.

        Returns the :class:`~echoforge.csm.loader.CheckpointPlan`; raises :class:`EngineUnavailable`
        (:class:`~echoforge.csm.loader.WeightsNotFound` when the weights are not on this machine).
        """
        from echoforge.csm.loader import inspect_checkpoint

        if check_device:
            from echoforge.csm.generator import pick_device

            pick_device(settings.device)
        csm = settings.csm
        return inspect_checkpoint(csm.model, tokenizer=csm.tokenizer, codec=csm.codec, local_files_only=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> CSMEngine:
        """Build from ``settings.csm``; raise :class:`EngineUnavailable` quickly when it cannot load.

        The device is checked first (``device: cuda`` on a CPU-only torch is one clear line). A hub
        repo id is looked up in the local cache first; the hub is only contacted when it answers
        within 2 s and ``HF_HUB_OFFLINE`` is not set, and then one weight set is downloaded.
        """
        from echoforge.csm.generator import CSMGenerator, pick_device
        from echoforge.csm.hub import WeightsNotFound, hf_offline, is_repo_id, missing_weights_message, resolve

        csm = settings.csm
        t0 = time.perf_counter()
        try:
            device = pick_device(settings.device)
            try:
                path = resolve(csm.model, local_files_only=True)
            except WeightsNotFound:
                if not is_repo_id(csm.model):
                    raise
                if hf_offline():
                    raise WeightsNotFound(missing_weights_message(csm.model, "HF_HUB_OFFLINE is set")) from None
                if not hub_reachable():
                    raise WeightsNotFound(
                        missing_weights_message(csm.model, "not in the local cache; the hub did not answer in 2 s")
                    ) from None
                path = resolve(csm.model, local_files_only=False)
            if csm.watermark:
                try:  # fail at start-up, not on the first request
                    import echoforge.csm.watermark  # noqa: F401
                except ImportError as exc:
                    raise EngineUnavailable(f"csm.watermark is on but the watermark module cannot load: {exc}") from exc
            generator = CSMGenerator.from_pretrained(
                path,
                device=device,
                dtype=None if settings.dtype == "auto" else settings.dtype,
                codec=csm.codec,
                tokenizer=csm.tokenizer,
                compile=csm.compile,
                max_batch_size=csm.max_batch_size,
                local_files_only=True,
                max_waiting=csm.max_waiting,
                prefill_chunk=csm.prefill_chunk,
                prefix_cache_mb=csm.prefix_cache_mb,  # KV of voice prompts, computed once per voice
            )
            # Run (on CUDA: capture) the sampled frame step for every batch bucket now, not on a request.
            warm = generator.warmup(chunk_frames=(csm.first_chunk_frames, csm.chunk_frames))
            log.info("CSM frame step warmed up in %.2f s", warm)
        except EngineUnavailable:
            raise
        except (ImportError, OSError, RuntimeError, ValueError, KeyError) as exc:
            raise EngineUnavailable(
                f"CSM model {csm.model!r} could not be loaded: {exc.__class__.__name__}: {exc}"
            ) from exc
        generator.max_reference_s = csm.max_reference_s  # voice prompts longer than this are trimmed
        log.info("CSM engine ready (%s on %s) in %.1f s", csm.model, generator.device, time.perf_counter() - t0)
        return cls(generator, csm.model, csm.watermark, csm.watermark_key, csm.first_chunk_frames, csm.chunk_frames)

    @property
    def max_concurrency(self) -> int:
        """Streams generated at once: the scheduler's KV-cache slots (``csm.max_batch_size``)."""
        return self.generator.scheduler.max_rows

    def scheduler_stats(self) -> dict:
        """Continuous-batching counters of this device's scheduler (for /api/diagnostic and /api/health)."""
        sch = self.generator.scheduler
        cache = sch.runner.prefix_cache
        return {**sch.stats, "slots": sch.max_rows, "active": sch.active, "waiting": len(sch.waiting),
                "max_waiting": sch.max_waiting, "prefix_cache_entries": len(cache), "prefix_cache_bytes": cache.bytes}  # fmt: skip

    # ------------------------------------------------------------------ the protocol's optional parts

    def load(self) -> tuple[int, int]:
        """``(running, waiting)`` streams of the scheduler: the one admission queue of CSM."""
        sch = self.generator.scheduler
        return sch.active, len(sch.waiting)

    def retry_after_s(self) -> float:
        """The scheduler's one Retry-After estimate."""
        return self.generator.scheduler.retry_after()

    @property
    def max_reference_s(self) -> float | None:
        """Voice prompts longer than this are trimmed (``csm.max_reference_s``; part of the prompt cache key)."""
        return self.generator.max_reference_s

    def encode_prompt(self, segment: Segment) -> Segment:
        """A voice's reference segment -> the prompt CSM reads: Mimi codes ``[frames, 32]``, a long clip
        trimmed at a pause (VoiceStore caches the result on disk per voice)."""
        return self.generator.prepare_segment(segment)

    def voices(self) -> list[VoiceInfo]:
        # CSM has no named voices: speaker ids plus context clips define the voice.
        return [
            VoiceInfo(id=f"speaker-{i}", name=f"Speaker {i}", description="CSM speaker id", speaker=i) for i in (0, 1)
        ]

    def _mark(self, audio: np.ndarray, offset: int = 0) -> np.ndarray:
        """Watermark ``audio``; ``offset`` is its position in a stream so chunk marks line up."""
        if not self.watermark or audio.size == 0:
            return audio
        from echoforge.csm import watermark

        return np.asarray(watermark.apply(audio, self.sample_rate, self.watermark_key, offset=offset), dtype=np.float32)

    def _kwargs(self, r: SynthesisRequest) -> dict:
        return dict(text=r.text, speaker=r.speaker, context=list(r.context), max_audio_length_ms=r.max_audio_length_ms,
                    temperature=r.temperature, topk=r.topk, seed=r.seed, should_stop=r.should_stop)  # fmt: skip

    def synthesize(self, request: SynthesisRequest) -> np.ndarray:
        """The whole utterance, watermarked once over its full length."""
        audio = self.generator.generate(**self._kwargs(request)).numpy().astype(np.float32, copy=False)
        # CSM has no rate control: `speed` is a pitch-preserving tempo change of the output.
        return self._mark(change_tempo(audio, self.sample_rate, request.speed))

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Chunks as frames arrive (``csm.first_chunk_frames``, then ``csm.chunk_frames``), each watermarked."""
        yield from self.open_stream(request)

    def open_stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """Like :meth:`stream`, but the request is admitted *now*, by the scheduler's queue (the one
        admission point of CSM): raises :class:`~echoforge.engines.base.EngineBusy` (with
        ``retry_after``) when every slot is taken and the queue is full; iterate for the chunks."""
        chunks = self.generator.submit_stream(
            **self._kwargs(request), first_chunk_frames=self.first_chunk_frames, chunk_frames=self.chunk_frames
        )
        return self._finish_chunks(chunks, request.speed)

    def _finish_chunks(self, chunks: Iterator, speed: float) -> Iterator[np.ndarray]:
        offset = 0
        stretch = TempoStretcher(self.sample_rate, speed) if speed != 1.0 else None
        for chunk in chunks:
            audio = chunk.numpy().astype(np.float32, copy=False)
            if stretch is not None:
                audio = stretch.process(audio)
                if audio.size == 0:
                    continue
            yield self._mark(audio, offset)
            offset += audio.size
        if stretch is not None and (tail := stretch.flush()).size:
            yield self._mark(tail, offset)
