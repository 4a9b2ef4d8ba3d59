"""One request's state while the scheduler runs it (nano-vllm's ``Sequence``), and its frame stream.

Owned by ``scheduler.py``: it creates a :class:`Sequence` on submit, moves it between its
queues and updates the counters below on the scheduler thread. The consumer only reads
:attr:`Sequence.out` through a :class:`FrameStream`. The device-side copy of the per-row
sampling state (position, temperature, top-k, RNG key, frame counter) lives in the runner's
persistent slot tensors; the fields here are the host's view of it.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from echoforge.engines.base import Segment

if TYPE_CHECKING:
    from echoforge.csm.prompt import Prompt
    from echoforge.csm.scheduler import FrameScheduler

END = object()  # the last item of a sequence's output queue


@dataclass
class Piece:
    """One piece of a request's text (long text is generated sentence-group by sentence-group)."""

    text: str
    frame_budget: int  # most frames this piece may generate
    key: int  # RNG key (seed + piece index)


@dataclass(eq=False, repr=False)  # identity semantics
class Sequence:
    id: int
    speaker: int
    context: list[Segment]  # what the prompt was built from (+ finished pieces, for rebuilds)
    pieces: list[Piece]
    temperature: float
    topk: int
    frames_left: int  # frames the whole request may still generate
    prompt: Prompt  # rows still to prefill (CPU): the first prompt, then each next piece's rows
    prefilled: int = 0  # rows of ``prompt`` already in the slot's KV cache
    cache_len: int = 0  # KV columns in use = RoPE position of the next input
    slot: int | None = None  # the KV-cache slot, held from admission to the end (never moved)
    piece: int = 0  # index into ``pieces``
    piece_frames: int = 0  # frames emitted in the current piece
    piece_codes: list[Tensor] = field(default_factory=list)  # those frames (CPU), fed back as context
    frame_index: int = 0  # frame counter of the RNG (restarts with each piece)
    ended_eos: bool = False
    cancelled: bool = False
    epoch: int = 0  # bumped when the sequence changes piece or leaves: in-flight frames of an old epoch are dropped
    prefix_hit: bool | None = None  # the voice prompt's KV came from the prefix cache (None: no prefix)
    should_stop: Callable[[], bool] | None = None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None

    @property
    def current(self) -> Piece:
        return self.pieces[self.piece]

    @property
    def prefill_done(self) -> bool:
        return self.prefilled >= self.prompt.n_rows


class FrameStream:
    """A request's frames ``[K]`` (CPU long tensors) as they are generated.

    Iterate it (blocking); :meth:`cancel` (or closing the iterator) removes the sequence at
    the next frame boundary and frees its slot.
    """

    def __init__(self, scheduler: FrameScheduler, seq: Sequence):
        self._scheduler, self.seq = scheduler, seq

    @property
    def _row(self) -> Sequence:  # older name, kept for tests and tools
        return self.seq

    @property
    def time_to_first_frame(self) -> float | None:
        s = self.seq
        return None if s.t_first is None else s.t_first - s.t_submit

    def cancel(self) -> None:
        self._scheduler.cancel(self.seq)

    def __iter__(self) -> Iterator[Tensor]:
        try:
            while True:
                item = self.seq.out.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()
