"""Mimi decoding batched across streams: one thread, one :func:`~echoforge.csm.mimi_stream.decode_batch`
call per group of queued chunks (see :class:`MimiBatcher`)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import torch
from torch import Tensor

from echoforge.csm.mimi import MimiCodec
from echoforge.csm.mimi_stream import StreamingDecoder, decode_batch


class MimiBatcher:
    """One thread decodes the chunks of every stream of one codec: whatever is queued when it wakes,
    grouped by chunk length, one :func:`decode_batch` call per group (on CUDA on a side stream of
    its own, so decoding overlaps the frame graphs; one device->host copy per call).

    Streams use :meth:`decoder` (one per stream): its ``decode(codes)`` blocks until the chunk is
    decoded and returns CPU float audio. A stream has at most one chunk in flight (its next chunk
    depends on the state this one leaves).

    ``stats``: ``chunks`` decoded, ``calls`` made, ``max_rows`` in one call.
    """

    def __init__(self, codec: MimiCodec):
        self.codec = codec
        self._queue: list[tuple[BatchedStream, Tensor, Any]] = []
        self._cv = threading.Condition()
        self._hold = threading.Lock()  # held while a round is drained and decoded (tests hold it to queue rows)
        self._thread: Any = None
        self._closed = False
        self.stats = {"chunks": 0, "calls": 0, "max_rows": 0}

    def decoder(self) -> BatchedStream:
        """A stream's decoder whose chunks go through this batcher."""
        return BatchedStream(self, self.codec.streaming_decoder())

    def submit(self, stream: BatchedStream, codes: Tensor) -> Any:
        """Queue ``codes [n, K]`` of ``stream``; a ``Future`` of its audio (1-D float, CPU)."""
        import threading
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the Mimi batcher is closed")
            self._queue.append((stream, codes, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="echoforge-mimi-batch", daemon=True)
                self._thread.start()
            self._cv.notify()
        return fut

    def paused(self) -> Any:
        """A context in which nothing is decoded: chunks queued inside it go out together after it."""
        return self._hold

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        import contextlib

        side = torch.cuda.Stream(self.codec.device) if self.codec.device.type == "cuda" else None
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
            with self._hold, torch.inference_mode(), torch.cuda.stream(side) if side else contextlib.nullcontext():
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
            codes = torch.stack([c for _, c, _ in group])
            audio = decode_batch([s.dec for s, _, _ in group], codes)
            host = torch.stack(audio).float().cpu() if audio else torch.zeros(0)  # one copy (and sync) per call
        except BaseException as exc:  # every stream of the call gets the error
            for _, _, fut in group:
                fut.set_exception(exc)
            return
        self.stats["chunks"] += len(group)
        self.stats["calls"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(group))
        for i, (_, _, fut) in enumerate(group):
            fut.set_result(host[i])


class BatchedStream:
    """One stream's decoder through a :class:`MimiBatcher` (the same ``decode`` as :class:`StreamingDecoder`)."""

    def __init__(self, batcher: MimiBatcher, dec: StreamingDecoder):
        self.batcher, self.dec = batcher, dec

    @property
    def frames_decoded(self) -> int:
        return self.dec.frames_decoded

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[n, K]`` -> the next ``n * 1920`` audio samples (1-D float, CPU), decoded with every
        other stream's chunk that is waiting."""
        if codes.shape[0] == 0:
            return torch.zeros(0)
        return self.batcher.submit(self, codes).result()

    def close(self) -> None:
        """Nothing to free (the state is this object's); kept for symmetry with stream lifetimes."""
