"""Voice activity detection and end-of-turn: Silero VAD (ONNX) under a plain synchronous state machine.

:class:`SileroVAD` runs the ``silero-vad`` package's shipped ONNX model with onnxruntime on
512-sample windows (32 ms at 16 kHz) — no torch, no download. :class:`TurnDetector` turns the
per-window speech probabilities into events:

* ``started`` after ``min_speech_ms`` of speech with at most ~100 ms of gaps — short noises never start a turn;
* ``stopped`` after ``silence_ms`` of silence, with the turn's audio (pre-roll included); with
  ``smart_turn`` on, the turn's audio is judged by the semantic end-of-turn model
  (:mod:`echoforge.agent.turn`) after ``smart_turn_ms`` of silence: a finished thought ends the turn
  right there, an unfinished one waits up to ``incomplete_silence_ms``.

While the agent speaks (:meth:`TurnDetector.set_bot_speaking`) a window only counts as speech when
its probability reaches the raised ``interrupt_threshold`` *and* the input is clearly louder than
the echo expected from the playback: the echo path's gain is estimated on the fly (upper range of
input/playback level ratios while nobody talks over the agent), and the input must beat
``echo_margin`` × that gain × the playback level (never more than ``echo_ratio`` × it). The agent's
own voice leaking back from the speakers therefore never interrupts it, a person talking over it
does, and with good echo cancellation (browsers) the bar drops to the plain VAD threshold.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees in front of each window


def silero_model_path(name: str = "silero_vad.onnx") -> Path:
    """The ONNX file shipped inside the ``silero-vad`` package (found without importing torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero-vad package is not installed (pip install --no-deps silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found at {path}")
    return path


class SileroVAD:
    """Streaming Silero VAD v5 on onnxruntime: ``prob = vad(window)`` for 512-sample float32 windows."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One window is ~0.1 ms of work; more threads only add scheduling overhead.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_path or silero_model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)  # (2, batch, 128) recurrent state
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of one 512-sample window at 16 kHz."""
        assert window.shape == (WINDOW,), window.shape
        x = np.concatenate([self._context, window.reshape(1, WINDOW).astype(np.float32)], axis=1)  # (1, 576)
        out, self._state = self.session.run(
            None, {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)}
        )
        self._context = x[:, -CONTEXT:]
        return float(out.reshape(-1)[0])


@dataclass
class VADEvent:
    """``kind`` is ``started``, ``pause`` or ``stopped``.

    ``audio`` (16 kHz): the turn so far on ``pause`` (a short silence inside the turn: the
    recogniser can start on it), the whole turn on ``stopped``. A ``pause``'s audio is a prefix of
    the turn's audio, so what was transcribed at the pause stays valid.
    """

    kind: str
    time_s: float
    audio: np.ndarray | None = None
    during_bot_speech: bool = False
    # ``stopped``: when the user's speech ended (``time_s`` less the silence that confirmed it) and,
    # with smart turn on, the model's probability that the turn was complete.
    speech_end_s: float | None = None
    turn_probability: float | None = None


@dataclass
class VADParams:
    threshold: float = 0.5
    interrupt_threshold: float = 0.85
    silence_ms: int = 600
    min_speech_ms: int = 200
    interrupt_min_speech_ms: int = 250
    echo_ratio: float = 0.5
    echo_margin: float = 2.0
    min_rms: float = 0.003
    preroll_ms: int = 300
    max_turn_s: float = 30.0
    partial_ms: int = 0  # a "pause" event after this much silence inside a turn (0: none)
    smart_turn: bool = False  # semantic end of turn (echoforge.agent.turn) instead of silence alone
    smart_turn_ms: int = 200  # silence after which the model is asked
    smart_turn_threshold: float = 0.5  # probability of "complete" that ends the turn at once
    incomplete_silence_ms: int = 1200  # silence that ends a turn the model judged unfinished


@dataclass
class _Turn:
    audio: list[np.ndarray] = field(default_factory=list)
    speech_windows: int = 0


class TurnDetector:
    """Synchronous VAD state machine: ``quiet → starting → speaking → quiet``.

    Feed any-length 16 kHz float32 chunks to :meth:`push`; it returns the events they caused.
    Time is counted in samples, so a file can be pushed faster than real time.
    """

    def __init__(
        self, params: VADParams | None = None, vad: SileroVAD | None = None, turn_model: Callable[[np.ndarray], float] | None = None
    ) -> None:
        self.params = params or VADParams()
        self.vad = vad or SileroVAD()
        self.vad.reset()
        # Semantic end of turn: audio → probability the turn is complete (params.smart_turn).
        if turn_model is None and self.params.smart_turn:
            from echoforge.agent.turn import smart_turn_model  # onnxruntime session: loaded only when used

            turn_model = smart_turn_model()
        self.turn_model = turn_model if self.params.smart_turn else None
        self._verdict: float | None = None  # the model's answer for the current silence stretch
        self.last_turn_probability: float | None = None
        self.bot_speaking = False
        # The echo reference follows the playback chunk by chunk (RMS per 40 ms chunk, see
        # playback_level). The input side is judged per 32 ms window: any smoothing there would let
        # a short loud noise linger long enough to pass for speech.
        self._playback_rms: deque[float] = deque(maxlen=4)
        # Input/playback level ratios of the last ~2 s of bot speech: their upper range estimates the
        # echo path's gain (≈0 with good echo cancellation, ≈0.25 for a laptop at -12 dB).
        self._echo_ratios: deque[float] = deque(maxlen=64)
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples = 0
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, self.params.preroll_ms * SAMPLE_RATE // 1000 // WINDOW))
        self.state = "quiet"
        self._turn = _Turn()
        self._run = 0  # speech windows since the start was suspected
        self._gap = 0  # non-speech windows since the start was suspected
        self._silence = 0  # consecutive silent windows while speaking
        self.last_prob = 0.0
        self.last_rms = 0.0

    # -- guard -----------------------------------------------------------------------------------
    def set_bot_speaking(self, speaking: bool) -> None:
        """Raise (or lower) the bar for speech while the agent's own voice plays."""
        self.bot_speaking = speaking
        if not speaking:
            self._playback_rms.clear()
            self._echo_ratios.clear()

    def note_playback(self, chunk: np.ndarray) -> None:
        """Record the level of audio just sent to the speakers (the echo reference)."""
        if chunk.size:
            self._playback_rms.append(float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64)))))

    @property
    def playback_level(self) -> float:
        """Loudest playback chunk of the last ~160 ms (0 when nothing played lately).

        A short max follows the playback closely (the echo is the playback, scaled and slightly
        delayed), so the floor is high exactly when the echo is loud and low in the agent's pauses.
        """
        return max(self._playback_rms, default=0.0)

    @property
    def echo_floor(self) -> float:
        """Input RMS that a window needs to count as speech while the agent talks.

        ``echo_margin`` × the estimated echo gain × the playback level, capped by the conservative
        ``echo_ratio`` × playback level (also used until ~0.5 s of evidence exist). The gain is the
        90th percentile of recent input/playback ratios: the echo's loud moments set the bar,
        a quiet room (or good echo cancellation) brings it down to the plain VAD.
        """
        p = self.params
        level = self.playback_level
        if len(self._echo_ratios) < 16:
            return p.echo_ratio * level
        gain = float(np.percentile(np.asarray(self._echo_ratios), 90))
        return min(p.echo_ratio, p.echo_margin * gain) * level

    def reset(self) -> None:
        self.vad.reset()
        self.state = "quiet"
        self._turn = _Turn()
        self._run = self._gap = self._silence = 0
        self._verdict = None
        self._pending = np.zeros(0, dtype=np.float32)
        self._preroll.clear()

    # -- core ------------------------------------------------------------------------------------
    def _is_speech(self, prob: float, rms: float) -> bool:
        p = self.params
        if rms < p.min_rms:
            return False
        if self.bot_speaking and self.state in ("quiet", "starting"):
            return prob >= p.interrupt_threshold and rms >= self.echo_floor
        # Hysteresis: once speaking, a lower probability keeps the turn going (Silero's own advice).
        threshold = p.threshold - 0.15 if self.state == "speaking" else p.threshold
        return prob >= threshold

    def push(self, audio: np.ndarray) -> list[VADEvent]:
        """Process 16 kHz mono float32 audio; return the ``started``/``stopped`` events it caused."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self._pending = np.concatenate([self._pending, audio]) if self._pending.size else audio
        events: list[VADEvent] = []
        n = self._pending.size // WINDOW
        for i in range(n):
            window = self._pending[i * WINDOW : (i + 1) * WINDOW]
            self._samples += WINDOW
            event = self._step(window)
            if event is not None:
                events.append(event)
        self._pending = self._pending[n * WINDOW :].copy()
        return events

    def _step(self, window: np.ndarray) -> VADEvent | None:
        p = self.params
        prob = self.vad(window)
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        level = self.playback_level
        if self.bot_speaking and self.state == "quiet" and level > 0 and rms < self.echo_floor:
            # Only windows under the current floor teach the echo estimate: a person talking over
            # the agent must not raise the bar against themselves.
            self._echo_ratios.append(rms / level)
        self.last_prob, self.last_rms = prob, rms
        speech = self._is_speech(prob, rms)
        now = self._samples / SAMPLE_RATE
        win_ms = WINDOW * 1000 / SAMPLE_RATE

        if self.state == "quiet":
            if speech:
                self.state = "starting"
                self._turn = _Turn(audio=list(self._preroll) + [window], speech_windows=1)
                self._run, self._gap = 1, 0
            else:
                self._preroll.append(window)
            return None

        if self.state == "starting":
            self._turn.audio.append(window)
            if speech:
                self._run += 1
                self._turn.speech_windows += 1
            else:
                self._gap += 1
                # Up to 3 quiet windows (~100 ms in all) are tolerated before the start is confirmed:
                # stop consonants, a breath between words. More means it was a short sound (a word
                # fragment, a knock) or echo peaks poking through the guard, not someone talking.
                if self._gap > 3:
                    self.state = "quiet"
                    self._preroll.extend(self._turn.audio[-self._preroll.maxlen :])
                    self._turn = _Turn()
                    return None
            need_ms = p.interrupt_min_speech_ms if self.bot_speaking else p.min_speech_ms
            if self._run * win_ms >= need_ms:
                self.state = "speaking"
                self._silence = 0
                return VADEvent("started", now, during_bot_speech=self.bot_speaking)
            return None

        # speaking
        self._turn.audio.append(window)
        if speech:
            self._silence = 0
            self._verdict = None  # the user went on: a later pause is judged afresh
            self._turn.speech_windows += 1
        else:
            self._silence += 1
        needed_ms = p.silence_ms
        pause_windows = int(np.ceil(p.partial_ms / win_ms)) if p.partial_ms else 0
        if self.turn_model is not None:
            ask_windows = max(1, int(np.ceil(p.smart_turn_ms / win_ms)))
            if pause_windows and ask_windows <= pause_windows:
                # The pause event goes first, so the recogniser works on the turn so far while the
                # model judges it (one window later) — a finished turn then only decodes the rest.
                ask_windows = pause_windows + 1
            if self._silence == ask_windows and self._verdict is None:
                self._verdict = self.last_turn_probability = float(self.turn_model(np.concatenate(self._turn.audio)))
            if self._verdict is not None:
                complete = self._verdict >= p.smart_turn_threshold
                needed_ms = ask_windows * win_ms if complete else max(p.incomplete_silence_ms, p.silence_ms)
        if pause_windows and self._silence == pause_windows and self._silence * win_ms < needed_ms:
            return VADEvent("pause", now, audio=np.concatenate(self._turn.audio))
        too_long = len(self._turn.audio) * WINDOW / SAMPLE_RATE >= p.max_turn_s
        if self._silence * win_ms >= needed_ms or too_long:
            speech_end = now - self._silence * win_ms / 1000
            probability = self._verdict
            # Keep ~200 ms of the trailing silence: Whisper likes a little room after the last word.
            keep = max(0, self._silence - int(200 / win_ms))
            chunks = self._turn.audio[: len(self._turn.audio) - keep]
            turn_audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            self.state = "quiet"
            self._turn = _Turn()
            self._preroll.clear()
            self._silence, self._verdict = 0, None
            return VADEvent("stopped", now, audio=turn_audio, speech_end_s=speech_end, turn_probability=probability)
        return None
