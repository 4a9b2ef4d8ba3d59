"""Mimi decoding batched across streams: one thread, one decode call per group of queued chunks
(see :class:`MimiBatcher`), the streams' decoder states in fixed per-slot buffers (:class:`SlotStates`),
and on CUDA the call compiled and CUDA-graphed per (rows bucket, chunk length), warmed before serving.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch
from torch import Tensor

from echoforge.csm.mimi import MimiCodec
from echoforge.csm.mimi_stream import StreamingDecoder, decode_batch
from echoforge.csm.runner import bucket_for, buckets

log = logging.getLogger("echoforge.csm.mimi")


class SlotStates:
    """The :class:`~echoforge.csm.mimi_stream.DecoderGraph` states of up to ``slots`` streams, in one
    persistent buffer per state tensor ``[slots + 1, ...]`` (the last slot is scratch: padding rows
    read and write it), and the one decode call over any rows of them, :meth:`step`.

    The step gathers its rows' states by slot index, runs the decoder, and writes them back in
    place: every shape depends only on the rows and the chunk length, and the buffers never move,
    so one compiled (CUDA-graphed) step per (rows, chunk length) serves any streams at any point.
    A stream's first call (``start == 0``) reads zero convolution states whatever the slot held
    (its keys before position 0 are masked anyway): a slot needs no clearing between streams.
    """

    def __init__(self, codec: MimiCodec, slots: int):
        self.graph = codec.decoder_graph
        self.scratch = slots
        self.buffers = self.graph.zeros(slots + 1, codec.device)  # never reallocated
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        """A free slot, or None when all are taken."""
        with self._lock:
            return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    @property
    def free(self) -> int:
        return len(self._free)

    def step(self, codes: Tensor, rows: Tensor) -> Tensor:
        """``codes [B, n, K]``; ``rows [2, B]``: each row's slot and the transformer steps its stream decoded
        before -> audio ``[B, n * frame_size]``; the rows' slots advanced in place. Slots must differ
        (except the scratch slot)."""
        g = self.graph
        idx, start = rows[0], rows[1]
        fresh = (start == 0)[:, None, None]
        state = [b.index_select(0, idx) for b in self.buffers]
        state[: g.n_conv] = [s.masked_fill(fresh, 0.0) for s in state[: g.n_conv]]
        audio, state = g.step(codes, start, state)
        for b, s in zip(self.buffers, state, strict=True):
            b.index_copy_(0, idx, s)
        return audio


class MimiBatcher:
    """One thread decodes the chunks of every stream of one codec: whatever is queued when it wakes,
    grouped by chunk length, one decode call per group (on CUDA on a side stream of its own, so
    decoding overlaps the frame graphs; one device->host copy per call).

    Streams use :meth:`decoder` (one per stream): its ``decode(codes)`` blocks until the chunk is
    decoded and returns CPU float audio. A stream has at most one chunk in flight (its next chunk
    depends on the state this one leaves). A stream's state lives in a slot of :attr:`states` from its
    first chunk until it is closed or collected; a stream that finds every slot taken keeps its own
    state and decodes eagerly (:func:`~echoforge.csm.mimi_stream.decode_batch`), still with the others
    of its group.

    Compiled path (``compile``, the default on CUDA): :meth:`SlotStates.step` is ``torch.compile``'d
    (on CUDA ``mode="reduce-overhead"``: CUDA graphs) for fixed shapes: a call's rows are padded up
    to the CSM runner's buckets (:func:`~echoforge.csm.runner.buckets` of ``max_rows``) and its chunk
    split into the warmed lengths (``chunk_frames``, longest first; a remainder shorter than all of
    them runs eager). :meth:`warmup` compiles and captures every (bucket, length) on this batcher's
    thread (CUDA graphs are recorded per thread); a shape that was not warmed runs the same step eager,
    so nothing compiles while serving.

    Args:
        codec: the Mimi codec (its device is where decoding runs).
        max_rows: rows of one call (the scheduler's slots); bigger groups are split.
        slots: streams whose states live in the slot buffers (default ``2 * max_rows``: streams
            whose consumer is still reading after their CSM row ended keep theirs).
        compile: compile the step (default: on CUDA).
        chunk_frames: the chunk lengths compiled (the server's first and later chunk frames).
        backend: ``torch.compile`` backend (tests trace with a counting one).

    ``stats``: ``chunks`` decoded, ``calls`` made, ``graph_calls`` of them on a compiled shape,
    ``max_rows`` in one call.
    """

    def __init__(self, codec: MimiCodec, max_rows: int = 8, slots: int | None = None, compile: bool | None = None,
                 chunk_frames: Sequence[int] = (2, 8), backend: str | Callable = "inductor"):  # fmt: skip
        self.codec = codec
        self.max_rows = max_rows
        self.buckets = buckets(max_rows)
        self.chunk_frames = sorted(set(chunk_frames), reverse=True)
        self.states = SlotStates(codec, 2 * max_rows if slots is None else slots)
        self.compile = codec.device.type == "cuda" if compile is None else compile
        self._graph_step: Any = None
        if self.compile:
            # Fixed addresses: the CUDA graphs read (codebook tables) and write (states) them in place.
            for t in self.states.buffers + self.states.graph.codebooks:
                torch._dynamo.mark_static_address(t)
            cuda = codec.device.type == "cuda" and backend == "inductor"
            limit = torch._dynamo.config.cache_size_limit  # one graph per (bucket, length), all of one function
            torch._dynamo.config.cache_size_limit = max(limit, len(self.buckets) * len(self.chunk_frames) + 8)
            self._graph_step = torch.compile(self.states.step, backend=backend, fullgraph=True, dynamic=False,
                                             mode="reduce-overhead" if cuda else None)  # fmt: skip
        self._warm: set[tuple[int, int]] = set()  # (rows bucket, frames) compiled and captured
        # One entry per shape warmed: {"bucket", "frames", "first_s" (trace + compile + first run), "capture_s"}.
        self.warm_times: list[dict] = []
        self.compile_error: str | None = None
        self._queue: list[tuple[BatchedStream, Tensor, Any]] = []
        self._calls: list[tuple[Callable[[], Any], Future]] = []
        self._cv = threading.Condition()
        self._hold = threading.Lock()  # held while a round is drained and decoded (tests hold it to queue rows)
        self._thread: Any = None
        self._closed = False
        self.stats = {"chunks": 0, "calls": 0, "graph_calls": 0, "max_rows": 0}

    def decoder(self) -> BatchedStream:
        """A stream's decoder whose chunks go through this batcher."""
        return BatchedStream(self)

    def submit(self, stream: BatchedStream, codes: Tensor) -> Any:
        """Queue ``codes [n, K]`` of ``stream``; a ``Future`` of its audio (1-D float, CPU)."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the Mimi batcher is closed")
            self._queue.append((stream, codes, fut))
            self._ensure_thread()
            self._cv.notify()
        return fut

    def paused(self) -> Any:
        """A context in which nothing is decoded: chunks queued inside it go out together after it."""
        return self._hold

    def warmup(self, buckets: Sequence[int] | None = None, chunk_frames: Sequence[int] | None = None) -> float:
        """Compile and capture the step for every rows bucket and chunk length (or the ones given: the
        device check times them one by one), on this batcher's thread; returns seconds (0 when not
        compiled). Each shape's times go to :attr:`warm_times`."""
        if not self.compile:
            return 0.0
        fut: Future = Future()
        with self._cv:
            self._calls.append((lambda: self._warm_all(buckets or self.buckets, chunk_frames or self.chunk_frames),
                                fut))  # fmt: skip
            self._ensure_thread()
            self._cv.notify()
        return fut.result()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="echoforge-mimi-batch", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        import contextlib

        side = torch.cuda.Stream(self.codec.device) if self.codec.device.type == "cuda" else None
        while True:
            with self._cv:
                while not self._queue and not self._calls and not self._closed:
                    self._cv.wait()
                if not self._queue and not self._calls:
                    return
                calls, self._calls = self._calls, []
            with self._hold, torch.inference_mode(), torch.cuda.stream(side) if side else contextlib.nullcontext():
                for fn, fut in calls:
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:
                        fut.set_exception(exc)
                with self._cv:
                    items, self._queue = self._queue, []
                seen: set[int] = set()
                now, later = [], []
                for it in items:  # one chunk per stream per round: its next one needs this one's state
                    (later if id(it[0]) in seen else now).append(it)
                    seen.add(id(it[0]))
                if later:
                    with self._cv:
                        self._queue[:0] = later
                groups: dict[int, list] = {}
                for it in now:
                    groups.setdefault(int(it[1].shape[0]), []).append(it)
                for group in groups.values():
                    self._decode(group)

    def _decode(self, group: list[tuple[BatchedStream, Tensor, Any]]) -> None:
        try:
            codes = torch.stack([c for _, c, _ in group])  # [R, n, K]
            r, n = codes.shape[0], codes.shape[1]
            codes = self.codec._check_codes(codes.reshape(r * n, -1)).view(r, n, -1)  # on the codec's device
            for s, _, _ in group:
                self._attach(s)
            slotted = [i for i, (s, _, _) in enumerate(group) if s.slot is not None]
            own = [i for i, (s, _, _) in enumerate(group) if s.slot is None]
            host: list[Any] = [None] * r
            if slotted:
                audio = self._run_slots([group[i][0] for i in slotted], codes[slotted])
                for k, i in enumerate(slotted):
                    host[i] = audio[k]
            if own:  # no slot was free for these: their own states, one eager call
                audio = decode_batch([group[i][0].dec for i in own], codes[own])
                self.stats["calls"] += 1
                for k, a in zip(own, torch.stack(audio).float().cpu(), strict=True):
                    host[k] = a
            for s, _, _ in group:
                s.frames += n
        except BaseException as exc:  # every stream of the call gets the error
            for _, _, fut in group:
                fut.set_exception(exc)
            return
        self.stats["chunks"] += len(group)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(group))
        for i, (_, _, fut) in enumerate(group):
            fut.set_result(host[i])

    def _attach(self, s: BatchedStream) -> None:
        """A slot for a stream's first chunk (or its own decoder when none is free)."""
        if s.slot is not None or s.dec is not None:
            return
        if s.closed:
            raise RuntimeError("this Mimi stream was closed")
        slot = self.states.acquire()
        if slot is None:
            s.dec = self.codec.streaming_decoder()
        else:
            s.slot = slot
            s._release = weakref.finalize(s, self.states.release, slot)

    def _pieces(self, n: int) -> list[int]:
        """``n`` frames as the compiled chunk lengths, longest first (a shorter remainder last)."""
        if not self.compile:
            return [n]
        out = []
        for m in self.chunk_frames:
            while n >= m:
                out.append(m)
                n -= m
        return out + ([n] if n else [])

    def _run_slots(self, streams: list[BatchedStream], codes: Tensor) -> Tensor:
        """Audio ``[R, n * frame_size]`` (CPU float) of slotted streams' chunks ``codes [R, n, K]``."""
        spf = self.states.graph.steps_per_frame
        cap = self.max_rows if self.compile else len(streams)
        parts, o = [], 0
        for m in self._pieces(codes.shape[1]):
            rows = []
            for r0 in range(0, len(streams), cap):
                ss = streams[r0 : r0 + cap]
                rows.append(self._call([s.slot for s in ss], [(s.frames + o) * spf for s in ss],
                                       codes[r0 : r0 + cap, o : o + m]))  # fmt: skip
            parts.append(torch.cat(rows))
            o += m
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _call(self, slots: list[int], starts: list[int], codes: Tensor) -> Tensor:
        """One step over ``slots`` (compiled when its padded shape was warmed) -> CPU float audio."""
        r, m = len(slots), codes.shape[1]
        b = bucket_for(r, self.max_rows)
        graph = (b, m) in self._warm
        if graph:  # padding rows: the scratch slot, a fresh stream of code 0
            slots = slots + [self.states.scratch] * (b - r)
            starts = starts + [0] * (b - r)
            padded = codes.new_zeros(b, m, codes.shape[2])  # the warmed strides (a slice's may differ)
            padded[:r] = codes
            codes = padded
        rows = torch.tensor([slots, starts], device=self.codec.device)
        if graph:
            if self.codec.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the previous replay's output is already copied
            audio = self._graph_step(codes, rows)
            self.stats["graph_calls"] += 1
        else:
            audio = self.states.step(codes, rows)
        self.stats["calls"] += 1
        return audio[:r].float().cpu()  # one copy (and sync) per call, before the next replay reuses the output

    def _warm_all(self, buckets: Sequence[int], chunk_frames: Sequence[int]) -> float:
        """Every (bucket, chunk length), on the scratch slot. A shape that fails to compile stays eager
        (logged, in :attr:`compile_error`): Mimi still decodes, and the server still starts."""
        t0 = time.perf_counter()
        cuda = self.codec.device.type == "cuda"
        k = self.codec.num_codebooks
        for m in chunk_frames:
            for b in buckets:
                if (b, m) in self._warm:
                    continue
                codes = torch.zeros(b, m, k, dtype=torch.long, device=self.codec.device)
                rows = torch.tensor([[self.states.scratch] * b, [0] * b], device=self.codec.device)
                times = []
                try:
                    for _ in range(3):  # cudagraph trees record on the 2nd/3rd call
                        t1 = time.perf_counter()
                        if cuda:
                            torch.compiler.cudagraph_mark_step_begin()
                        self._graph_step(codes, rows).float().cpu()
                        times.append(time.perf_counter() - t1)
                except Exception as exc:
                    log.exception("Mimi decode step (%d rows, %d frames) did not compile; it runs eager", b, m)
                    self.compile_error = f"{type(exc).__name__}: {exc}"
                    return time.perf_counter() - t0
                self._warm.add((b, m))
                self.chunk_frames = sorted({*self.chunk_frames, m}, reverse=True)
                self.warm_times.append(dict(bucket=b, frames=m, first_s=times[0], capture_s=sum(times[1:])))
        return time.perf_counter() - t0


class BatchedStream:
    """One stream's decoder through a :class:`MimiBatcher` (the same ``decode`` as :class:`StreamingDecoder`).

    Its state is in the batcher's slot ``slot`` (taken at the first chunk, given back by :meth:`close`
    or when this object is collected), or in its own ``dec`` when no slot was free.
    """

    def __init__(self, batcher: MimiBatcher):
        self.batcher = batcher
        self.slot: int | None = None
        self.dec: StreamingDecoder | None = None
        self.frames = 0
        self.closed = False
        self._release: Any = None

    @property
    def frames_decoded(self) -> int:
        return self.frames

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[n, K]`` -> the next ``n * 1920`` audio samples (1-D float, CPU), decoded with every
        other stream's chunk that is waiting."""
        if codes.shape[0] == 0:
            return torch.zeros(0)
        return self.batcher.submit(self, codes).result()

    def close(self) -> None:
        """Give the slot back (the stream decodes nothing more)."""
        self.closed = True
        if self._release is not None:
            self._release()
