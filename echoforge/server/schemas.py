"""Pydantic request and response models of the HTTP API (the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from echoforge.text import TEXT_PATTERN

# The one text rule (echoforge.text.check_text), documented; checked in code for a clear 400.
_SAYABLE = {"pattern": TEXT_PATTERN}


# Numbers are strict: JSON `false`/`true` or "7" are not 0/1/7 (the schema says integer/number).
# Integer fields still take 2.0 (JSON Schema's "integer" is any number with a zero fraction)
# and number fields take 2.
def _is_numeric(annotation: Any) -> bool:
    return annotation in (int, float) or any(a in (int, float) for a in get_args(annotation))


class StrictNumbers(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _json_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool | str) and _is_numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a JSON number, not a string or true/false")
        return value


AudioFormatName = Literal["wav", "mp3", "opus", "flac", "aac", "pcm"]
TaskStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Documented on every route so clients (and schemathesis) know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "Bad request",
        401: "Missing or invalid API key",
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        413: "Request or upload too large",
        422: "Validation error",
        429: "Rate limit or queue full (see Retry-After)",
        503: "Engine unavailable (see Retry-After)",
    }.items()
}


def error(description: str) -> dict[str, Any]:
    """One documented error response with a route-specific description."""
    return {"model": ErrorResponse, "description": description}


# The 400s the schema cannot express as JSON Schema, said per route.
TEXT_400 = error(
    "The text breaks the text rule (control characters, nothing to say, over server.max_text_chars) "
    "or would need more audio than the audio limit (generation.max_audio_length_ms; never cut short)"
)
UPLOAD_400 = error("The upload is empty, is not decodable audio, or is longer than server.max_upload_seconds")


def document_limits(openapi: dict[str, Any], max_text_chars: int) -> dict[str, Any]:
    """Say the server's real text limit in the schema: every field under the text rule gets
    ``maxLength`` = ``server.max_text_chars`` (when lower than its static limit)."""
    for schema in openapi.get("components", {}).get("schemas", {}).values():
        for prop in schema.get("properties", {}).values():
            if prop.get("pattern") == TEXT_PATTERN:
                prop["maxLength"] = min(prop.get("maxLength", max_text_chars), max_text_chars)
    return openapi


# ------------------------------------------------------------------ health / diagnostic
class EngineStatus(BaseModel):
    name: str
    is_fallback: bool
    model: str
    device: str
    sample_rate: int
    description: str
    smoke_test: bool = Field(False, description="True for a test model far smaller than CSM-1B (random weights: speaks noise).")


class QueueStatus(BaseModel):
    backend: str
    depth: int
    running: int
    reachable: bool = Field(True, description="False when the queue's store (Redis, SQLite) cannot be reached.")
    error: str | None = None


class StreamStatus(BaseModel):
    in_use: int = Field(description="Streams holding an engine slot now.")
    waiting: int = Field(description="Streams waiting for a slot.")
    capacity: int = Field(description="Slots: CSM's continuous-batching rows, or the fallback's pool size.")
    scheduler: dict[str, int] | None = Field(None, description="CSM scheduler counters (frames, steps, rows_done, max_rows_seen, ...).")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    engine: EngineStatus
    queue: QueueStatus
    streams: StreamStatus | None = None
    replicas: dict[str, Any] | None = Field(None, description="Engine replicas when served on Ray Serve (`echoforge serve --ray`): running/target counts, states, and per replica its id, pid, node and streams.")
    agent: dict[str, Any] | None = Field(
        None,
        description="The voice agent without loading it: `knowledge_base` (folder, documents, chunks once loaded, "
        "empty) and `llm` (backend: endpoint, llama.cpp or transformers; building: llama.cpp still compiling).",
    )
    auth_required: bool
    uptime_s: float
    model_load_s: float
    limits: dict[str, int | float] = {}


# ------------------------------------------------------------------ voices
class VoiceTags(BaseModel):
    gender: str = ""
    style: str = ""
    language: str = ""


class Voice(BaseModel):
    id: str
    name: str
    description: str
    tags: VoiceTags
    builtin: bool
    transcript: str
    speaker: int
    sample_url: str
    created_at: str


class VoiceEngine(BaseModel):
    """Which engine speaks these voices, said where the voice is chosen."""

    name: str
    is_fallback: bool
    smoke_test: bool = False
    note: str = Field("", description="Empty on CSM-1B; otherwise what the voices will (not) sound like.")


class VoiceList(BaseModel):
    voices: list[Voice]
    engine: VoiceEngine | None = None


class VoicePatch(StrictNumbers):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=80)
    description: str | None = Field(None, max_length=500)
    transcript: str | None = Field(None, max_length=2000)
    gender: str | None = Field(None, max_length=40)
    style: str | None = Field(None, max_length=40)
    language: str | None = Field(None, max_length=40)
    speaker: int | None = Field(None, ge=0, le=31)


# ------------------------------------------------------------------ generation / tasks
class ContextTurn(StrictNumbers):
    speaker: int = Field(0, ge=0, le=31)
    text: str = Field(..., min_length=1, max_length=4096, json_schema_extra=_SAYABLE)
    voice: str | None = Field(None, max_length=120)


class GenerateRequest(StrictNumbers):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, description="What to say (limit: server.max_text_chars).", json_schema_extra=_SAYABLE)
    voice: str = Field("alloy", min_length=1, max_length=120, description="Voice id, name or OpenAI voice name.")
    context: list[ContextTurn] = Field(default_factory=list, max_length=16)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    topk: int | None = Field(None, ge=1, le=2051)
    speed: float | None = Field(None, ge=0.25, le=4.0)
    max_audio_length_ms: int | None = Field(None, ge=100, le=600_000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    format: AudioFormatName = "wav"
    instructions: str | None = Field(None, max_length=4096)
    timestamps: StrictBool = Field(
        False,
        description="Also time every word: the done task has `words`, and `captions_url` serves SRT / WebVTT.",
    )


class ConversationTurn(BaseModel):
    voice: str = Field(..., min_length=1, max_length=120)
    text: str = Field(..., min_length=1, max_length=4096, json_schema_extra=_SAYABLE)


class ConversationRequest(StrictNumbers):
    model_config = ConfigDict(extra="forbid")

    turns: list[ConversationTurn] = Field(..., min_length=1, max_length=64)
    format: AudioFormatName = "wav"
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    topk: int | None = Field(None, ge=1, le=2051)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class TaskCreated(BaseModel):
    task_id: str
    status: TaskStatus
    status_url: str
    audio_url: str


class Timings(BaseModel):
    queue_s: float | None = None
    synth_s: float | None = None
    audio_s: float | None = None
    rtf: float | None = None


class WordTiming(BaseModel):
    word: str = Field(..., description="The input word, as written (punctuation included).")
    start_s: float = Field(..., description="When the word starts, seconds from the start of the audio.")
    end_s: float = Field(..., description="When it ends.")
    interpolated: bool = Field(False, description="Not placed by the engine/aligner: estimated from its neighbours.")


class Task(BaseModel):
    id: str
    kind: str
    status: TaskStatus
    progress: float
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    timings: Timings
    result_url: str | None
    format: str
    request: dict[str, Any]
    words: list[WordTiming] | None = Field(None, description="Word timings (tasks created with `timestamps: true`, once done).")
    captions_url: str | None = Field(None, description="`?format=srt|vtt|json` (tasks with timestamps, once done).")


class TaskList(BaseModel):
    tasks: list[Task]


# ------------------------------------------------------------------ OpenAI-compatible
class SpeechRequest(StrictNumbers):
    """``POST /v1/audio/speech`` as OpenAI defines it."""

    model: str = Field(..., min_length=1, max_length=100)
    input: str = Field(..., min_length=1, max_length=4096, json_schema_extra=_SAYABLE)
    voice: str | dict[str, Any] = Field(..., description='A voice name/id, or {"id": ...}.')
    instructions: str | None = Field(None, max_length=4096)
    response_format: AudioFormatName = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
