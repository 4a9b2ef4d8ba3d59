"""Continuous batching for CSM: one frame-level scheduler per device (nano-vllm's loop, per frame).

A CSM frame (80 ms of audio) plays the role of an LLM token. Every request is a *row*:

* it waits in a bounded FIFO (``max_waiting``; beyond that :class:`SchedulerBusy`);
* it gets a KV-cache slot when one is free (``max_rows``), and its prompt is prefilled in
  chunks of ``prefill_chunk`` positions, one chunk between two frames of the running rows,
  so a long voice prompt never stalls the others for more than a chunk;
* it joins the batched decode at the next frame boundary and streams its frames out;
* it leaves at EOS (an all-zero frame), at its frame budget, or when cancelled, and its
  slot is handed on (the last running row moves into the hole, so running rows are always
  slots ``0..n-1`` and one batched call serves them).

Long text is split into pieces; a row keeps its slot between pieces and the next piece's
text is prefilled *after* the frames already in its cache, so the voice context carries over
exactly as if the earlier pieces had been given as context. Only when the 2048-position
window would overflow is the prompt rebuilt (keeping the voice prompt, dropping old pieces).

Each row has its own temperature, top-k and seed; sampling noise is a pure function of
(seed, frame, codebook) (see ``generate.exponential_noise``), so a row's audio does not depend
on which other rows share its frames. Mimi decoding happens in the consumer's thread, so it
overlaps with the next frames here.
"""

from __future__ import annotations

import itertools
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from echoforge.csm import generate as G
from echoforge.engines.base import EngineBusy, Segment
from echoforge.text import normalize_text, split_sentences

if TYPE_CHECKING:
    from echoforge.csm.generator import CSMGenerator, Request

log = logging.getLogger("echoforge.csm.scheduler")

FRAME_MS = 80  # one Mimi frame at 12.5 Hz
# Per-piece frame cap when text is split: twice a slow speaking rate (15 chars/s) plus 2 s, so one
# piece that never emits EOS cannot eat the whole request's budget.
_CHARS_PER_S = 15.0
# Batch-size buckets of the compiled path: one CUDA graph each, the batch padded up to the next.
BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_END = object()


def bucket_for(rows: int, max_rows: int) -> int:
    """The batch size the compiled step runs ``rows`` rows at: the next bucket, capped at the slots."""
    return min(next((x for x in BUCKETS if x >= rows), max_rows), max_rows)


def buckets(max_rows: int) -> list[int]:
    """Every batch size :func:`bucket_for` can return (one CUDA graph each, captured at warm-up)."""
    return sorted({bucket_for(n, max_rows) for n in range(1, max_rows + 1)})


class SchedulerBusy(EngineBusy):
    """Every slot is taken and the wait queue is full; try again after ``retry_after`` seconds."""


@dataclass
class _Piece:
    text: str
    budget: int  # frame cap of this piece
    key: int  # RNG key (seed + piece index)


@dataclass(eq=False, repr=False)  # identity semantics: rows are looked up in lists
class _Row:
    rid: int
    speaker: int
    context: list[Segment]  # what the prompt was built from (+ finished pieces, for rebuilds)
    pieces: list[_Piece]
    temperature: float
    topk: int
    left: int  # frames left for the whole request
    prompt: tuple[Tensor, Tensor]  # rows [T, K+1] + mask still to prefill (CPU)
    filled: int = 0  # how many prompt rows are in the cache
    pos: int = 0  # cache columns in use = RoPE position of the next input
    piece: int = 0
    emitted: int = 0  # frames of the current piece
    got: list[Tensor] = field(default_factory=list)  # frames of the current piece (CPU)
    counter: int = 0  # frame index for the RNG
    ended_eos: bool = False
    cancelled: bool = False
    epoch: int = 0  # bumped when the row changes piece or leaves: in-flight frames of an old epoch are dropped
    should_stop: Callable[[], bool] | None = None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None


class FrameStream:
    """A request's frames ``[K]`` (CPU long tensors) as they are generated.

    Iterate it (blocking); :meth:`cancel` (or closing the iterator) removes the row at the next
    frame boundary and frees its slot.
    """

    def __init__(self, scheduler: FrameScheduler, row: _Row):
        self._scheduler, self._row = scheduler, row

    @property
    def time_to_first_frame(self) -> float | None:
        r = self._row
        return None if r.t_first is None else r.t_first - r.t_submit

    def cancel(self) -> None:
        self._scheduler.cancel(self._row)

    def __iter__(self) -> Iterator[Tensor]:
        try:
            while True:
                item = self._row.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


class FrameScheduler:
    """Owns the KV-cache slots of one :class:`CSMGenerator` and runs every row, frame by frame.

    Args:
        gen: the generator (model, tokenizer, prompt building).
        max_rows: KV-cache slots = rows decoded together.
        max_waiting: admitted requests waiting for a slot; beyond it :meth:`submit` raises.
        prefill_chunk: prompt positions prefilled between two frames of the running rows.
    """

    def __init__(self, gen: CSMGenerator, max_rows: int = 4, max_waiting: int = 32, prefill_chunk: int = 256,
                 lag: bool | None = None):  # fmt: skip
        self.gen, self.model, self.device = gen, gen.model, gen.device
        # One frame in flight (static/CUDA path): frame t+1 is launched before frame t's codes are
        # read back, so the GPU never idles on the host's EOS checks and queue pushes. A row that
        # ended at t has its (wasted) frame t+1 dropped. The eager CPU path has nothing to overlap.
        self.lag = (gen.static and self.device.type == "cuda") if lag is None else lag
        self._pending: tuple[list[tuple[_Row, int]], Tensor, Any] | None = None
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self.max_rows, self.max_waiting, self.prefill_chunk = max_rows, max_waiting, prefill_chunk
        if self.model.max_batch_size < max_rows:  # caches only grow (several schedulers may share a model in tests)
            self.model.setup_caches(max_rows, gen.dtype)
        self._h = torch.zeros(max_rows, self.model.args.backbone.dim, dtype=gen.dtype, device=self.device)
        self.waiting: deque[_Row] = deque()
        self.prefilling: _Row | None = None
        self.running: list[_Row] = []  # running[i] owns cache slot i
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._dirty = True  # per-row tensors must be rebuilt (rows joined, left or changed piece)
        self._t: dict[str, Tensor] = {}
        self.stats = {"frames": 0, "steps": 0, "prefill_tokens": 0, "rows_done": 0, "max_rows_seen": 0}

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> int:
        """Rows holding a slot (running or prefilling)."""
        return len(self.running) + (self.prefilling is not None)

    def submit(self, req: Request) -> FrameStream:
        """Admit ``req`` (prompt built here, in the caller's thread) and return its frame stream.

        Raises:
            SchedulerBusy: all slots are taken and ``max_waiting`` requests already wait.
            ValueError: the text cannot fit the model's window.
        """
        row = self._make_row(req)
        with self._cv:
            if self._closed:
                raise RuntimeError("the CSM scheduler is shut down")
            if self.active + len(self.waiting) >= self.max_rows + self.max_waiting:
                raise SchedulerBusy(
                    f"CSM is at capacity ({self.max_rows} streams running, {len(self.waiting)} waiting)",
                    retry_after=self._retry_after(),
                )
            self.waiting.append(row)
            self._ensure_thread()
            self._cv.notify()
        return FrameStream(self, row)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the scheduler's thread between two frames and return its result.

        CUDA graphs are recorded per thread, so warm-up must run where the frames will.
        """
        fut: Future = Future()
        with self._cv:
            self._calls.append((fn, fut))
            self._ensure_thread()
            self._cv.notify()
        return fut.result()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="echoforge-csm-scheduler", daemon=True)
            self._thread.start()

    def cancel(self, row: _Row) -> None:
        with self._cv:
            row.cancelled = True
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ rows

    def _make_row(self, req: Request) -> _Row:
        text = normalize_text(req.text)
        limit = self.gen.max_piece_chars
        texts = split_sentences(text, limit) if len(text) > limit else [text]
        total = max(1, int(req.max_audio_length_ms // FRAME_MS))
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        pieces = []
        for n, t in enumerate(texts):
            cap = total if len(texts) == 1 else min(total, int((2 * len(t) / _CHARS_PER_S + 2) * 1000 / FRAME_MS))
            pieces.append(_Piece(t, cap, G.seed_key(seed + n)))
        ctx = [self.gen.prepare_segment(s) for s in req.context]  # Mimi-encode once, not per piece
        tok, msk, frames = self.gen.build_prompt(pieces[0].text, req.speaker, ctx, pieces[0].budget)
        pieces[0].budget = frames
        topk = max(1, min(int(req.topk), self.model.args.audio_vocab_size))
        row = _Row(next(self._ids), req.speaker, ctx, pieces, float(req.temperature), topk, total, (tok, msk))
        row.should_stop = req.should_stop
        return row

    def _retry_after(self) -> float:
        # Rough: a waiting request needs a running one to finish; assume ~10 s of audio each.
        return max(1.0, 2.0 * (1 + len(self.waiting) // max(1, self.max_rows)))

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._closed and not self._has_work():
                        self._cv.wait()
                    if self._closed:
                        self._fail_all(RuntimeError("the CSM scheduler was shut down"))
                        return
                    calls = list(self._calls)
                    self._calls.clear()
                for fn, fut in calls:
                    try:
                        fut.set_result(fn())
                    except Exception as exc:
                        fut.set_exception(exc)
                try:
                    self.step()
                except Exception as exc:  # a bug or OOM must fail the rows, not hang their clients
                    log.exception("CSM scheduler step failed; failing %d rows", self.active)
                    self._fail_all(exc)

    def _has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling or self._pending or self._calls)

    @torch.inference_mode()
    def step(self) -> None:
        """One scheduling round: reap cancellations, admit, prefill one chunk, decode one frame."""
        with self._cv:
            self._reap_cancelled()
        # Prefill up to `prefill_chunk` positions this round: several short prompts join at once
        # (16 simultaneous arrivals do not wait 16 frames), one long prompt goes in chunks. With no
        # stream running there is nobody to stall: admit a burst (up to every slot) before decoding.
        budget = self.prefill_chunk if self.running else self.prefill_chunk * self.max_rows
        while budget > 0:
            with self._cv:
                if self.prefilling is None and self.waiting and len(self.running) < self.max_rows:
                    self.prefilling = self.waiting.popleft()
            if self.prefilling is None:
                break
            budget -= self._prefill_chunk(self.prefilling, budget)
        if self.running:
            self._decode()
        elif self._pending is not None:  # the last in-flight frame of rows that all ended
            prev, self._pending = self._pending, None
            self._complete(*prev)

    def _reap_cancelled(self) -> None:
        for r in [*self.waiting, *self.running, *([self.prefilling] if self.prefilling else [])]:
            if r.should_stop is not None and not r.cancelled and r.should_stop():
                r.cancelled = True
        for r in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(r)
            r.out.put(_END)
        if self.prefilling is not None and self.prefilling.cancelled:
            self.prefilling.out.put(_END)
            self.prefilling = None
        for r in [r for r in self.running if r.cancelled]:
            self._finish(r)

    def _prefill(self, row: _Row, slot: int, limit: int | None = None) -> Tensor | None:
        """Feed up to ``limit`` pending prompt rows of ``row`` into ``slot``; the last state when done."""
        tok, msk = row.prompt
        n = tok.shape[0] - row.filled if limit is None else min(limit, tok.shape[0] - row.filled)
        sl = slice(row.filled, row.filled + n)
        h = G.prefill(self.model, tok[None, sl].to(self.device), msk[None, sl].to(self.device), row.pos, slot)
        row.filled += n
        row.pos += n
        self.stats["prefill_tokens"] += n
        return h[0] if row.filled == tok.shape[0] else None

    def _prefill_chunk(self, row: _Row, limit: int) -> int:
        """Prefill up to ``limit`` positions of the admitted row; returns how many were fed."""
        slot, before = len(self.running), row.filled
        h = self._prefill(row, slot, limit)
        if h is not None:  # prompt complete: the row decodes from the next frame on
            self._h[slot] = h
            self.running.append(row)
            self.prefilling = None
            self._dirty = True
            self.stats["max_rows_seen"] = max(self.stats["max_rows_seen"], len(self.running))
        return row.filled - before

    def _tensors(self) -> dict[str, Tensor]:
        if self._dirty:
            rows, dev = self.running, self.device
            temps = [r.temperature for r in rows]
            topks = [r.topk for r in rows]
            self._t = {
                "pos": torch.tensor([r.pos for r in rows], device=dev),
                "temperature": torch.tensor(temps, dtype=torch.float, device=dev),
                "topk": torch.tensor(topks, device=dev),
                "key": torch.tensor([r.pieces[r.piece].key for r in rows], device=dev),
                "counter": torch.tensor([r.counter for r in rows], device=dev),
                "kmax": max(topks), "greedy": all(t == 0 for t in temps), "any_greedy": any(t == 0 for t in temps),
            }  # fmt: skip
            self._dirty = False
        return self._t

    def _decode(self) -> None:
        rows = list(self.running)
        b = len(rows)
        t = self._tensors()
        if self.gen.static:
            frame, h = self._decode_static(rows, t)
        else:
            sampler = G.Sampler(t["temperature"], t["topk"], t["key"], t["counter"], t["kmax"], t["greedy"], t["any_greedy"])
            max_pos = max(r.pos for r in rows)
            same = all(r.pos == max_pos for r in rows)
            frame, h = G.decode_step(self.model, self._h[:b], t["pos"], max_pos + 1, sampler, same)
        self._h[:b] = h
        t["pos"] += 1
        t["counter"] += 1
        for r in rows:  # all first: a row that leaves below may move another row's cache (pos columns)
            r.pos += 1
            r.counter += 1
        self.stats["steps"] += 1
        self.stats["frames"] += b
        launched = [(r, r.epoch) for r in rows]
        if not self.lag:
            self._complete(launched, frame.cpu())  # the host sync: EOS checks and streaming need the codes
            return
        host = torch.empty(frame.shape, dtype=frame.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(frame, non_blocking=True)
        done = torch.cuda.Event() if self.device.type == "cuda" else None
        if done is not None:
            done.record()
        prev, self._pending = self._pending, (launched, host, done)
        if prev is not None:  # frame t-1's codes, read while frame t runs
            self._complete(*prev)

    def _complete(self, launched: list[tuple[_Row, int]], host: Tensor, done: Any = None) -> None:
        """Hand out one step's frames; rows end at EOS or budget (frames of an old epoch are dropped)."""
        if done is not None:
            done.synchronize()
        eos = (host == 0).all(-1).tolist()
        now = time.perf_counter()
        for i, (r, epoch) in enumerate(launched):
            if r.epoch != epoch:  # the row ended or changed piece after this frame was launched
                continue
            if r.cancelled:
                self._finish(r)
            elif eos[i]:
                r.ended_eos = True
                self._end_piece(r)
            else:
                r.out.put(host[i])
                if r.t_first is None:
                    r.t_first = now
                r.got.append(host[i])
                r.emitted += 1
                r.left -= 1
                if r.emitted >= r.pieces[r.piece].budget or r.left <= 0:
                    self._end_piece(r)

    def _decode_static(self, rows: list[_Row], t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Padded to a batch-size bucket; the pad rows compute on idle slots and are dropped."""
        b = len(rows)
        pad = bucket_for(b, self.max_rows) - b
        # A pad row writes one cache column of its slot: the prefilling row's next column (it
        # rewrites it itself) or column 0 of an idle slot, never a live column.
        pad_pos = [self.prefilling.pos if (self.prefilling is not None and i == 0) else 0 for i in range(pad)]
        dev = self.device
        kmax = G.KMAX if t["kmax"] <= G.KMAX else self.model.args.audio_vocab_size

        def padded(x: Tensor, fill: list) -> Tensor:
            return torch.cat([x, torch.tensor(fill, dtype=x.dtype, device=dev)]) if pad else x

        sampler = G.Sampler(
            padded(t["temperature"], [0.0] * pad), padded(t["topk"], [1] * pad), padded(t["key"], [0] * pad),
            padded(t["counter"], [0] * pad), kmax, greedy=False, any_greedy=True,
        )  # fmt: skip
        # With a frame in flight, a row that just used its last column gets one wasted frame more:
        # clamp it into its own (finished) last column rather than past the window.
        pos = padded(t["pos"], pad_pos).clamp_max(self.gen.window - 1)
        frame, h = self.gen._decode_frame(self.model, self._h[: b + pad], pos, sampler)
        # CUDA-graph outputs are overwritten by the next replay: copy what we keep.
        return frame[:b].clone(), h[:b].clone()

    def _end_piece(self, r: _Row) -> None:
        """A piece ended (EOS or its budget): start the next one in the same slot, or finish."""
        if r.got:
            r.context.append(Segment(r.speaker, r.pieces[r.piece].text, torch.stack(r.got)))
        if r.piece + 1 >= len(r.pieces) or r.left <= 0:
            self._finish(r)
            return
        r.piece += 1
        r.epoch += 1
        if self._pending is not None and any(row is r for row, _ in self._pending[0]):
            r.pos -= 1  # the frame launched after this one is dropped: the next prefill overwrites its column
        nxt = r.pieces[r.piece]
        nxt.budget = min(nxt.budget, r.left)
        text_tok, text_msk = self.gen._text_rows(r.speaker, nxt.text)
        if not r.ended_eos:  # close the audio turn like a context segment does: one all-zero frame
            z_tok, z_msk = self.gen._audio_rows(torch.zeros(0, self.model.args.audio_num_codebooks, dtype=torch.long))
            text_tok, text_msk = torch.cat([z_tok, text_tok]), torch.cat([z_msk, text_msk])
        if r.pos + text_tok.shape[0] + nxt.budget <= self.gen.window:
            r.prompt, r.filled = (text_tok, text_msk), 0  # continue after what the cache holds
        else:  # the window would overflow: rebuild from the voice prompt + the latest pieces
            tok, msk, nxt.budget = self.gen.build_prompt(nxt.text, r.speaker, r.context, nxt.budget)
            r.prompt, r.filled, r.pos = (tok, msk), 0, 0
        slot = self.running.index(r)
        self._h[slot] = self._prefill(r, slot)
        r.emitted, r.got, r.counter, r.ended_eos = 0, [], 0, False
        self._dirty = True

    def _finish(self, r: _Row) -> None:
        """Row leaves: close its stream, move the last running row into its slot."""
        r.epoch += 1
        i = self.running.index(r)
        last = len(self.running) - 1
        if i != last:
            moved = self.running[last]
            self.model.backbone.move_slot(last, i, moved.pos)
            self._h[i] = self._h[last]
            self.running[i] = moved
        self.running.pop()
        if self.prefilling is not None and self.prefilling.pos:  # it sat right after the running rows
            self.model.backbone.move_slot(last + 1, last, self.prefilling.pos)
        self._dirty = True
        self.stats["rows_done"] += 1
        r.out.put(_END)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            rows = list(self.waiting) + self.running + ([self.prefilling] if self.prefilling else [])
            self.waiting.clear()
            self.running = []
            self.prefilling = None
            self._pending = None
            self._dirty = True
        for r in rows:
            r.out.put(exc)
