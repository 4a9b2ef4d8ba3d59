"""Multi-speaker conversation rendering — shared by ``echoforge converse`` and ``POST /api/conversations``.

Each generated turn is fed back to the engine as context for the next one (the equivalent of
the reference's two-speaker ``run_csm.py`` demo), together with each speaker's reference
prompt, so CSM keeps every voice stable across the conversation. Fallback engines ignore
context; they still render the script, one voice per speaker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from echoforge.audio import fade_edges, silence
from echoforge.engines.base import Segment, SynthesisRequest, TTSEngine
from echoforge.text import audio_budget_ms


@dataclass(frozen=True)
class Turn:
    """One line of the script: which speaker says what (``voice`` is engine-specific)."""

    speaker: int
    text: str
    voice: str | None = None


def render_conversation(
    engine: TTSEngine,
    turns: Sequence[Turn],
    prompts: dict[int, Segment] | None = None,
    *,
    temperature: float = 0.9,
    topk: int = 50,
    seed: int | None = None,
    pause_ms: int = 250,
    max_context_turns: int = 4,
    max_audio_length_ms: int | None = None,
    on_turn: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Render ``turns`` into one clip at ``engine.sample_rate``.

    Args:
        engine: any TTS engine.
        turns: the script, in order.
        prompts: per-speaker reference segments (audio + transcript) that always lead the
            context, pinned as voice prompts (kept when the window is full); the most recent
            ``max_context_turns`` generated turns follow them.
        seed: base seed; turn *i* uses ``seed + i`` so a script renders reproducibly.
        max_audio_length_ms: the audio cap of one turn; by default each turn's own budget,
            :func:`echoforge.text.audio_budget_ms` of its text, so every turn is spoken in full.
        on_turn: progress callback ``(done, total)`` after each turn.
        should_stop: polled between turns; return True to cancel (raises ``InterruptedError``).

    Returns:
        1-D float32 audio with ``pause_ms`` of silence between turns.
    """
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    prompts = prompts or {}
    history: list[Segment] = []
    pieces: list[np.ndarray] = []
    gap = silence(pause_ms / 1000, engine.sample_rate)
    for i, turn in enumerate(turns):
        if should_stop is not None and should_stop():
            raise InterruptedError("conversation rendering was cancelled")
        # The prompts are the voices: pinned, so CSM drops old turns (never them) when its window fills.
        context = [prompts[s].as_voice_prompt() for s in sorted(prompts)] + history[-max_context_turns:]
        request = SynthesisRequest(
            text=turn.text,
            voice=turn.voice,
            speaker=turn.speaker,
            context=context,
            temperature=temperature,
            topk=topk,
            max_audio_length_ms=audio_budget_ms(turn.text) if max_audio_length_ms is None else max_audio_length_ms,
            seed=None if seed is None else seed + i,
        )
        audio = engine.synthesize(request)
        history.append(Segment(speaker=turn.speaker, text=turn.text, audio=audio, sample_rate=engine.sample_rate))
        if pieces:
            pieces.append(gap)
        pieces.append(fade_edges(audio, engine.sample_rate))
        if on_turn is not None:
            on_turn(i + 1, len(turns))
    return np.concatenate(pieces).astype(np.float32)
