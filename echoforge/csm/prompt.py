"""The one CSM prompt builder: segments -> 33-column rows, the pinned voice prompt, window fitting.

Owns the prompt *layout* (Sesame's reference): every position is a row of 33 columns (32
codebooks + one text token) with a mask saying which columns are real. A segment is its
text ``<bos>[{speaker}]{text}<eos>`` followed (for turns with audio) by its audio frames and
one all-zero frame, the end-of-audio marker. :func:`segment_rows` is that layout for one
segment; the generator's prompts (:class:`PromptBuilder`), the scheduler's next-piece rows
(:meth:`PromptBuilder.continuation`) and training sequences (``echoforge.train.dataset.build_rows``)
are all built from it, so the three can never disagree.

:class:`PromptBuilder` also owns what goes *into* a prompt: Mimi-encoding a segment's audio,
trimming an over-long voice prompt, and fitting everything into the 2048-position window with
the voice prompt pinned at the start. The pinned segments at the start of a prompt are its
*prefix* (:attr:`Prompt.prefix_len`, :attr:`Prompt.prefix_key`): identical for every request
with that voice, so the runner caches their KV (see ``prefix_cache.py``).

Nothing here touches the model or the device.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from echoforge.audio import cut_at_pause, resample, to_mono_float32
from echoforge.csm.rates import FRAME_MS, SAMPLE_RATE
from echoforge.engines.base import Segment
from echoforge.text import normalize_text

log = logging.getLogger("echoforge.csm")

# Longest voice prompt (a saved voice's reference clip) fed to the model, in seconds; the engine
# sets ``max_reference_s`` from ``csm.max_reference_s``. 15 s of clean speech carries a voice's
# timbre and prosody (Sesame's own prompts are short single utterances) and costs at most 189 of
# the 2048 positions, leaving room for text, 90 s of output and recent turns. 0/None = no limit.
MAX_REFERENCE_S = 15.0
# A voice prompt that cannot fit even alone is shortened, down to this many frames (2 s), before it is dropped.
_MIN_PROMPT_FRAMES = 25


def segment_rows(text_ids: Sequence[int] | np.ndarray, codes: Any, num_codebooks: int) -> tuple[np.ndarray, np.ndarray]:
    """One segment in the prompt layout: ``tokens [n, K+1]`` int64 and ``mask [n, K+1]`` bool.

    ``text_ids`` (``<bos>[spk]text<eos>`` ids, may be empty) fill the text column; ``codes``
    ``[F, >=K]`` (None = a text-only segment) fill the codebook columns, followed by one all-zero
    end-of-audio frame (``codes`` with 0 frames gives that frame alone: closing an audio turn).
    """
    k = num_codebooks
    text_ids = np.asarray(text_ids, dtype=np.int64).reshape(-1)
    nt = text_ids.size
    nf = -1 if codes is None else int(codes.shape[0])
    tokens = np.zeros((nt + nf + 1, k + 1), dtype=np.int64)
    mask = np.zeros(tokens.shape, dtype=bool)
    tokens[:nt, -1] = text_ids
    mask[:nt, -1] = True
    if codes is not None:
        c = codes.cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
        tokens[nt : nt + nf, :k] = c[:, :k]  # row nt+nf (EOS) stays all-zero
        mask[nt:, :k] = True
    return tokens, mask


@dataclass
class Prompt:
    """Rows ``[T, K+1]`` + mask (CPU) for one request, its frame budget and its cacheable prefix."""

    tokens: Tensor
    mask: Tensor
    frames: int  # frames the window leaves for generation (<= the request's budget)
    prefix_len: int = 0  # leading rows that are the pinned voice prompt(s): the same for every request of the voice

    @property
    def n_rows(self) -> int:
        return self.tokens.shape[0]

    def __iter__(self):  # ``tokens, mask, frames = builder.build(...)``
        return iter((self.tokens, self.mask, self.frames))

    def __getitem__(self, i: int) -> Any:
        return (self.tokens, self.mask, self.frames)[i]

    @cached_property
    def prefix_key(self) -> str | None:
        """Content digest of the prefix rows (None without one): equal keys = equal KV, on one model."""
        if not self.prefix_len:
            return None
        p = self.prefix_len
        h = hashlib.blake2b(digest_size=16)
        h.update(self.tokens[:p].numpy().tobytes())
        h.update(self.mask[:p].numpy().tobytes())
        return h.hexdigest()


class PromptBuilder:
    """Builds every prompt of one checkpoint (tokenizer + codec + window)."""

    def __init__(self, tokenizer: Any, bos_id: int, eos_id: int, num_codebooks: int, window: int,
                 encode_audio: Callable[[Any, int], Tensor], max_reference_s: float | None = MAX_REFERENCE_S):  # fmt: skip
        self.tokenizer, self.bos_id, self.eos_id = tokenizer, bos_id, eos_id
        self.num_codebooks, self.window = num_codebooks, window
        self.encode_audio = encode_audio  # (audio, sample_rate) -> Mimi codes [F, K]
        self.max_reference_s = max_reference_s

    # ------------------------------------------------------------------ rows

    def text_ids(self, speaker: int, text: str) -> list[int]:
        return [self.bos_id, *self.tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False).ids, self.eos_id]

    def text_rows(self, speaker: int, text: str) -> tuple[Tensor, Tensor]:
        tok, msk = segment_rows(self.text_ids(speaker, text), None, self.num_codebooks)
        return torch.from_numpy(tok), torch.from_numpy(msk)

    def segment_rows(self, seg: Segment) -> tuple[Tensor, Tensor]:
        """Rows of one context segment (its audio Mimi-encoded / trimmed first if need be)."""
        seg = self.prepare_segment(seg)
        tok, msk = segment_rows(self.text_ids(seg.speaker, normalize_text(seg.text)), seg.audio, self.num_codebooks)
        return torch.from_numpy(tok), torch.from_numpy(msk)

    def continuation(self, speaker: int, text: str, close_audio: bool) -> tuple[Tensor, Tensor]:
        """Rows that continue a sequence with the next piece of text (after its generated frames).

        ``close_audio``: the previous piece ended on its budget, not on EOS, so the audio turn
        is closed first with the all-zero frame, exactly as a context segment would be.
        """
        tok, msk = self.text_rows(speaker, text)
        if not close_audio:
            return tok, msk
        z_tok, z_msk = segment_rows([], np.zeros((0, self.num_codebooks), dtype=np.int64), self.num_codebooks)
        return torch.cat([torch.from_numpy(z_tok), tok]), torch.cat([torch.from_numpy(z_msk), msk])

    # ------------------------------------------------------------------ segments

    def _reference_limit_s(self) -> float | None:
        return float(self.max_reference_s) if self.max_reference_s else None

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

    # ------------------------------------------------------------------ whole prompts

    def build(self, text: str, speaker: int, context: Sequence[Segment], max_frames: int) -> Prompt:
        """The prompt for ``text`` after ``context``, with its frame budget and pinned prefix.

        The 2048-position window must hold context + text + generated frames. When it does
        not, the oldest *unpinned* context segments (earlier generated or user turns) are
        dropped first, with a warning; the voice prompt (``Segment.pinned``) stays at the
        start. Only when the pinned segments alone still do not fit are they shortened
        (down to 2 s each) or, failing that, dropped oldest first, again with a warning.
        Context never raises; text that cannot fit even alone raises ValueError.
        """
        gen_tok, gen_mask = self.text_rows(speaker, text)
        if gen_tok.shape[0] + 1 > self.window:
            raise ValueError(
                f"text is too long: {gen_tok.shape[0]} tokens, the model's window is {self.window}; split it"
            )
        frames = max(1, min(max_frames, self.window - gen_tok.shape[0]))
        budget = self.window - gen_tok.shape[0] - frames
        segs = [self.prepare_segment(s) for s in context]
        rows = [self.segment_rows(s) for s in segs]
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
        prefix_len = 0
        for i in keep:  # the leading run of pinned segments: the voice prompt(s)
            if not segs[i].pinned:
                break
            prefix_len += rows[i][0].shape[0]
        tokens = torch.cat([rows[i][0] for i in keep] + [gen_tok])
        mask = torch.cat([rows[i][1] for i in keep] + [gen_mask])
        return Prompt(tokens, mask, frames, prefix_len)

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
                        rows[i] = self.segment_rows(segs[i])
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
