"""Integrations with other voice ecosystems.

* :mod:`echoforge.integrations.wyoming` — a Wyoming TTS server for Home Assistant's Assist
  (``echoforge wyoming``, extra ``[wyoming]``).
* :mod:`echoforge.integrations.pipecat` — a pipecat TTS service that speaks through a running
  EchoForge server's WebSocket (extra ``[pipecat]``).

Both go through the server's own pieces — :class:`~echoforge.server.services.voices.VoiceStore`
for voices, :class:`~echoforge.server.services.synthesis.SynthesisService` (or the server
itself) for requests, tone and audio — and only translate protocols.
"""

from __future__ import annotations

from echoforge.analysis.params import parse_tone


class ToneCarry:
    """Keep an utterance's tone across the sentences it is split into.

    ``"(gently) I hear you. That sounds hard."`` is spoken one sentence at a time; the modifier
    is on the first one only. This remembers the last modifier seen (or ``default``) so the
    caller can hand it on with the sentences that carry none. Modifiers are recognised by
    :func:`echoforge.analysis.params.parse_tone`, the same parser every request goes through.
    """

    def __init__(self, default: str | None = None) -> None:
        self.default = default
        self.current = default

    def reset(self) -> None:
        """Start a new utterance (back to ``default``)."""
        self.current = self.default

    def see(self, sentence: str) -> str | None:
        """Record ``sentence``'s own modifier, if any.

        Args:
            sentence: the next piece of text, possibly starting with ``(tone)``.

        Returns:
            The tone to apply to ``sentence`` when it carries no modifier itself (``None`` if
            there is none); a sentence's own modifier always wins on the server side.
        """
        _, emotions, _ = parse_tone(sentence)
        if emotions:
            self.current = emotions[-1]
            return None
        return self.current
