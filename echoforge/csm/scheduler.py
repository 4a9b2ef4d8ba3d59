"""Continuous batching for CSM: the scheduling *policy* of one device (nano-vllm's ``Scheduler``).

A CSM frame (80 ms of audio) plays the role of an LLM token. Every request is a
:class:`~echoforge.csm.sequence.Sequence`:

* it waits in the one bounded FIFO of the device (``max_waiting``; beyond that
  :class:`SchedulerBusy` with one Retry-After estimate) — the only admission point for CSM;
* it gets a KV-cache slot when one is free and keeps it to the end (slots are stable, nothing
  is moved when a neighbour leaves); its prompt is prefilled in chunks of ``prefill_chunk``
  positions between two frames of the running rows, so a long voice prompt never stalls the
  others for more than a chunk. Chunk boundaries depend only on the prompt (the voice prompt
  is its own run of chunks), so a prefix-cache hit — the voice prompt's KV copied in instead of
  computed — changes no value (see ``prefix_cache.py``);
* it joins the batched frame step at the next frame boundary and streams its frames out;
* it leaves at EOS (an all-zero frame), at its frame budget, or when cancelled.

Long text is split into pieces; a sequence keeps its slot between pieces and the next piece's
text is prefilled *after* the frames already in its cache, so the voice context carries over
exactly as if the earlier pieces had been given as context. Only when the 2048-position
window would overflow is the prompt rebuilt (keeping the voice prompt, dropping old pieces).

Each row has its own temperature, top-k and seed; sampling noise is a pure function of
(seed, frame, codebook), so a row's audio does not depend on which other rows share its frames.

Who owns what: prompts are built by ``prompt.py`` (in the submitting thread), tensors and the
device by ``runner.py``; this file is the policy — :meth:`FrameScheduler.schedule` (admission
and the prefill round), :meth:`FrameScheduler.postprocess` (hand frames out, end pieces and
rows) — plus the thread that loops over them.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch
from torch import Tensor

from echoforge.csm import generate as G
from echoforge.csm.prompt import Prompt, PromptBuilder
from echoforge.csm.rates import FRAME_MS
from echoforge.csm.runner import BUCKETS, ModelRunner, bucket_for, buckets
from echoforge.csm.sequence import END, FrameStream, Piece, Sequence
from echoforge.engines.base import EngineBusy, Segment
from echoforge.text import audio_budget_ms, normalize_text, split_sentences

__all__ = ["BUCKETS", "FRAME_MS", "FrameScheduler", "FrameStream", "SchedulerBusy", "bucket_for", "buckets"]

log = logging.getLogger("echoforge.csm.scheduler")

# Text longer than this is generated sentence-group by sentence-group, each piece fed back as context.
MAX_PIECE_CHARS = 300
# Per-piece frame cap when text is split: the piece's own audio budget (``echoforge.text.audio_budget_ms``,
# from the one speaking rate), so one piece that never emits EOS cannot eat the whole request's budget.


class SchedulerBusy(EngineBusy):
    """Every slot is taken and the wait queue is full; try again after ``retry_after`` seconds."""


class FrameScheduler:
    """Owns the slots of one :class:`ModelRunner` and runs every sequence, frame by frame.

    Args:
        runner: execution on the device (KV-cache slots = ``runner.max_rows``).
        prompts: the prompt builder of the same checkpoint.
        max_waiting: admitted requests waiting for a slot; beyond it :meth:`submit` raises.
        prefill_chunk: prompt positions prefilled between two frames of the running rows.
        max_piece_chars: text longer than this is generated piece by piece.
    """

    def __init__(self, runner: ModelRunner, prompts: PromptBuilder, max_waiting: int = 32, prefill_chunk: int = 256,
                 max_piece_chars: int = MAX_PIECE_CHARS):  # fmt: skip
        self.runner, self.prompts = runner, prompts
        self.max_rows, self.max_waiting, self.prefill_chunk = runner.max_rows, max_waiting, prefill_chunk
        self.max_piece_chars = max_piece_chars
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.running: list[Sequence] = []
        self._free = list(range(self.max_rows))  # free slots, lowest first
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._thread: Any = None
        self._closed = False
        self._frame_s = FRAME_MS / 1000  # recent seconds per frame step (for Retry-After); real time to start
        self.stats = {"frames": 0, "steps": 0, "prefill_tokens": 0, "rows_done": 0, "max_rows_seen": 0,
                      "rows_cancelled": 0, "prefix_hits": 0, "prefix_misses": 0, "prefix_tokens_saved": 0}  # fmt: skip

    @property
    def lag(self) -> bool:
        return self.runner.lag

    @property
    def _pending(self) -> Any:  # the runner's in-flight frame (tests read it)
        return self.runner.pending_tag()

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> int:
        """Sequences holding a slot (running or prefilling)."""
        return len(self.running) + (self.prefilling is not None)

    def submit(self, req: Any) -> FrameStream:
        """Admit ``req`` (a ``generator.Request``; prompt built here, in the caller's thread) and return its stream.

        Raises:
            SchedulerBusy: all slots are taken and ``max_waiting`` requests already wait.
            ValueError: the text cannot fit the model's window.
        """
        seq = self._make_sequence(req)
        with self._cv:
            if self._closed:
                raise RuntimeError("the CSM scheduler is shut down")
            if self.active + len(self.waiting) >= self.max_rows + self.max_waiting:
                raise SchedulerBusy(
                    f"CSM is at capacity ({self.max_rows} streams running, {len(self.waiting)} waiting)",
                    retry_after=self.retry_after(),
                )
            self.waiting.append(seq)
            self._ensure_thread()
            self._cv.notify()
        return FrameStream(self, seq)

    def retry_after(self) -> float:
        """The one Retry-After estimate of CSM: the queue ahead, at the recent frame pace.

        A waiting request needs a slot: roughly one running request's remaining frames per
        ``max_rows`` requests ahead of it.
        """
        frames = [s.frames_left for s in self.running] or [125]
        ahead = len(self.waiting) + 1
        per_slot = sum(frames) / len(frames)  # mean frames a running row still makes
        rounds = -(-ahead // max(1, self.max_rows))
        return float(min(60.0, max(1.0, rounds * per_slot * self._frame_s)))

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

    def cancel(self, seq: Sequence) -> None:
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if isinstance(self._thread, threading.Thread):
            self._thread.join(timeout=5)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="echoforge-csm-scheduler", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ sequences

    def _make_sequence(self, req: Any) -> Sequence:
        text = normalize_text(req.text)
        limit = self.max_piece_chars
        texts = split_sentences(text, limit) if len(text) > limit else [text]
        total = max(1, int(req.max_audio_length_ms // FRAME_MS))
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        pieces = []
        for n, t in enumerate(texts):
            cap = total if len(texts) == 1 else min(total, int(audio_budget_ms(t, normalized=True) / FRAME_MS))
            pieces.append(Piece(t, cap, G.seed_key(seed + n)))
        ctx = [self.prompts.prepare_segment(s) for s in req.context]  # Mimi-encode once, not per piece
        prompt = self.prompts.build(pieces[0].text, req.speaker, ctx, pieces[0].frame_budget)
        pieces[0].frame_budget = prompt.frames
        topk = max(1, min(int(req.topk), self.runner.model.args.audio_vocab_size))
        seq = Sequence(next(self._ids), req.speaker, ctx, pieces, float(req.temperature), topk, total, prompt)
        seq.should_stop = req.should_stop
        return seq

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        import time

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
                    t0 = time.perf_counter()
                    decoded = self.step()
                    if decoded:
                        self._frame_s = 0.9 * self._frame_s + 0.1 * (time.perf_counter() - t0)
                except Exception as exc:  # a bug or OOM must fail the rows, not hang their clients
                    log.exception("CSM scheduler step failed; failing %d rows", self.active)
                    self._fail_all(exc)

    def _has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling or self.runner.pending or self._calls)

    @torch.inference_mode()
    def step(self) -> bool:
        """One round: :meth:`schedule` (reap, admit, prefill), one frame for the running rows,
        :meth:`postprocess` of the frame that came back. Returns whether a frame was launched."""
        hi = self.schedule()
        if hi:
            done = self.runner.decode(hi, [(s, s.epoch) for s in self.running])
            self.stats["steps"] += 1
            self.stats["frames"] += len(self.running)
            for s in self.running:
                s.cache_len += 1  # the host's view of the runner's in-place advance
            if done is not None:
                self.postprocess(*done)
            return True
        if self.runner.pending:  # the last in-flight frame of rows that all ended
            self.postprocess(*self.runner.drain())
        return False

    def schedule(self) -> int:
        """Reap cancellations, admit waiting sequences into free slots and prefill this round's chunks.

        Prefill gets up to ``prefill_chunk`` positions per round, so several short prompts join
        at once and one long prompt goes in chunks; with no stream running there is nobody to
        stall, so a burst (up to every slot) is admitted before the first frame. Returns the
        slot range the frame step must cover (0: nothing to decode).
        """
        with self._cv:
            self._reap_cancelled()
        budget = self.prefill_chunk if self.running else self.prefill_chunk * self.max_rows
        while budget > 0:
            with self._cv:
                if self.prefilling is None and self.waiting and self._free:
                    seq = self.waiting.popleft()
                    seq.slot = self._free.pop(0)
                    self.runner.park(seq.slot, 0)
                    self.prefilling = seq
            if self.prefilling is None:
                break
            budget -= self._prefill_chunk(self.prefilling)
        return max((s.slot for s in self.running), default=-1) + 1

    def postprocess(self, launched: list[tuple[Sequence, int]], codes: Tensor) -> None:
        """Hand out one step's frames (``codes`` indexed by slot); sequences end at EOS or budget.

        Frames launched in an older epoch of their sequence (it ended or changed piece since) are dropped.
        """
        import time

        eos = (codes == 0).all(-1).tolist()
        now = time.perf_counter()
        for seq, epoch in launched:
            if seq.epoch != epoch:
                continue
            frame = codes[seq.slot]
            if seq.cancelled:
                self._finish(seq)
            elif eos[seq.slot]:
                seq.ended_eos = True
                self._end_piece(seq)
            else:
                seq.out.put(frame)
                if seq.t_first is None:
                    seq.t_first = now
                seq.piece_codes.append(frame)
                seq.piece_frames += 1
                seq.frames_left -= 1
                if seq.piece_frames >= seq.current.frame_budget or seq.frames_left <= 0:
                    self._end_piece(seq)

    # ------------------------------------------------------------------ prefill

    def _chunk_end(self, seq: Sequence) -> int:
        """End of the next prefill chunk: fixed boundaries, the voice prompt (prefix) its own run."""
        p, f = seq.prompt, seq.prefilled
        stop = p.prefix_len if f < p.prefix_len else p.n_rows
        return min(f + self.prefill_chunk, stop)

    def _prefill_chunk(self, seq: Sequence) -> int:
        """Prefill the next chunk of ``seq`` (or load its cached prefix); returns positions computed."""
        p, runner = seq.prompt, self.runner
        if p.prefix_len and seq.prefilled == 0 and seq.cache_len == 0 and seq.prefix_hit is None:
            seq.prefix_hit = runner.load_prefix(p.prefix_key, seq.slot, p.prefix_len)
            self.stats["prefix_hits" if seq.prefix_hit else "prefix_misses"] += 1
            if seq.prefix_hit:
                seq.prefilled = seq.cache_len = p.prefix_len
                self.stats["prefix_tokens_saved"] += p.prefix_len
                runner.park(seq.slot, seq.cache_len)
                return 0
        end = self._chunk_end(seq)
        n = end - seq.prefilled
        h = runner.prefill(seq.slot, p.tokens[seq.prefilled : end], p.mask[seq.prefilled : end], seq.cache_len)
        seq.prefilled, seq.cache_len = end, seq.cache_len + n
        self.stats["prefill_tokens"] += n
        if p.prefix_len and end == p.prefix_len and seq.cache_len == end:  # the voice prompt is in: keep its KV
            runner.save_prefix(p.prefix_key, seq.slot, end)
        if not seq.prefill_done:
            runner.park(seq.slot, seq.cache_len)  # a dummy frame row may only touch the next column
            return n
        self._start_decoding(seq, h)
        if seq is self.prefilling:
            self.prefilling = None
            self.running.append(seq)
            self.stats["max_rows_seen"] = max(self.stats["max_rows_seen"], len(self.running))
        return n

    def _start_decoding(self, seq: Sequence, h: Tensor) -> None:
        self.runner.start_row(seq.slot, h, seq.cache_len, seq.temperature, seq.topk, seq.current.key)

    # ------------------------------------------------------------------ ends

    def _end_piece(self, seq: Sequence) -> None:
        """A piece ended (EOS or its budget): start the next one in the same slot, or finish."""
        if seq.piece_codes:
            seq.context.append(Segment(seq.speaker, seq.current.text, torch.stack(seq.piece_codes)))
        if seq.piece + 1 >= len(seq.pieces) or seq.frames_left <= 0:
            self._finish(seq)
            return
        tag = self.runner.pending_tag()
        if tag is not None and any(s is seq for s, _ in tag):
            seq.cache_len -= 1  # the frame launched after this one is dropped: the next prefill overwrites its column
        seq.piece += 1
        seq.epoch += 1
        nxt = seq.current
        nxt.frame_budget = min(nxt.frame_budget, seq.frames_left)
        tok, msk = self.prompts.continuation(seq.speaker, nxt.text, close_audio=not seq.ended_eos)
        if seq.cache_len + tok.shape[0] + nxt.frame_budget <= self.prompts.window:
            seq.prompt = Prompt(tok, msk, nxt.frame_budget)  # continue after what the cache holds
        else:  # the window would overflow: rebuild from the voice prompt + the latest pieces
            seq.prompt = self.prompts.build(nxt.text, seq.speaker, seq.context, nxt.frame_budget)
            nxt.frame_budget = seq.prompt.frames
            seq.cache_len, seq.prefix_hit = 0, None
        seq.prefilled = 0
        seq.piece_frames, seq.piece_codes, seq.ended_eos = 0, [], False
        while not seq.prefill_done:  # in one go: a piece's text is short
            self._prefill_chunk(seq)

    def _finish(self, seq: Sequence) -> None:
        """The sequence leaves: close its stream, park and free its slot (no KV moves)."""
        seq.epoch += 1
        if seq in self.running:
            self.running.remove(seq)
        self._release(seq)
        self.stats["rows_done"] += 1
        seq.out.put(END)

    def _release(self, seq: Sequence) -> None:
        if seq.slot is not None:
            self.runner.park(seq.slot, 0)
            self._free.append(seq.slot)
            self._free.sort()
            seq.slot = None

    def _reap_cancelled(self) -> None:
        for s in [*self.waiting, *self.running, *([self.prefilling] if self.prefilling else [])]:
            if s.should_stop is not None and not s.cancelled and s.should_stop():
                s.cancelled = True
        self.stats["rows_cancelled"] += sum(s.cancelled for s in (*self.waiting, *self.running, self.prefilling) if s)
        for s in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(s)
            s.out.put(END)
        if self.prefilling is not None and self.prefilling.cancelled:
            s, self.prefilling = self.prefilling, None
            self._release(s)
            s.out.put(END)
        for s in [s for s in self.running if s.cancelled]:
            self._finish(s)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            seqs = list(self.waiting) + self.running + ([self.prefilling] if self.prefilling else [])
            self.waiting.clear()
            for s in self.running + ([self.prefilling] if self.prefilling else []):
                self._release(s)
            self.running = []
            self.prefilling = None
            self.runner.drop_pending()
        for s in seqs:
            s.out.put(exc)
