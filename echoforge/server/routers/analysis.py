"""``POST /api/analyze`` (how a clip sounds), ``GET /api/voices/{id}/profile`` (voice memory) and
``GET /api/presets`` (the studio's tone presets, from the one table in ``analysis/params.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile
from fastapi.concurrency import run_in_threadpool

from echoforge.analysis import analyze_audio
from echoforge.analysis.memory import ProfileStore
from echoforge.analysis.params import DEFAULT_PARAMS, emotion_params
from echoforge.audio import AudioDecodeError, AudioTooLong, load_audio
from echoforge.server.deps import RateLimitedDep, ServicesDep
from echoforge.server.errors import BadRequest, NotFound, PayloadTooLarge
from echoforge.server.schemas import ERROR_RESPONSES, UPLOAD_400, error

router = APIRouter(tags=["analysis"], responses=ERROR_RESPONSES)


@router.post("/api/analyze", responses={400: UPLOAD_400})
async def analyze(
    services: ServicesDep,
    _: RateLimitedDep,
    audio: Annotated[UploadFile, File(description="A clip to analyse: wav, flac, ogg, mp3, …")],
    transcript: Annotated[str, Form(max_length=4000)] = "",
) -> dict:
    """Energy, pitch, speaking rate, pauses, emotion (+ confidence) and the parameters it maps to."""
    limits = services.settings.server
    data = await audio.read(int(limits.max_upload_mb * 1024 * 1024) + 1)
    if len(data) > limits.max_upload_mb * 1024 * 1024:
        raise PayloadTooLarge(f"audio file is larger than the {limits.max_upload_mb:g} MB limit", param="audio")
    if not data:
        raise BadRequest("audio file is empty", param="audio")
    try:  # the duration limit is checked from the header/stream before decoding
        samples, sr = await run_in_threadpool(load_audio, data, max_seconds=limits.max_upload_seconds)
    except AudioTooLong as exc:
        raise PayloadTooLarge(f"audio: {exc}", param="audio", code="audio_too_long") from None
    except AudioDecodeError as exc:
        raise BadRequest(f"audio: {exc}", param="audio") from None
    report = await run_in_threadpool(analyze_audio, samples, sr, transcript or None)
    return report.to_dict()


@router.get(
    "/api/voices/{voice_id}/profile",
    responses={404: error("No profile for this voice yet (profiles grow as the voice speaks)")},
)
def voice_profile(
    voice_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A voice id (as the profile store names files)")], services: ServicesDep
) -> dict:
    """The long-term profile of a voice (running pitch/energy/rate, emotion mix, drift reference)."""
    try:
        profile = ProfileStore(services.settings.data_dir).load(voice_id)
    except ValueError as exc:
        raise BadRequest(str(exc), param="voice_id") from None
    if profile is None:
        raise NotFound(f"no profile for voice {voice_id!r} yet: profiles grow as the voice speaks", param="voice_id")
    data = profile.__dict__.copy()
    data.pop("embedding")
    data["embedding_dim"] = len(profile.embedding)
    return data


@router.get("/api/presets")
def presets(services: ServicesDep) -> list[dict]:
    """Tone presets: the text modifier the server parses off (never spoken) and the sampling it selects.

    Values come from the emotion table (YAML overrides applied); ``neutral`` shows the
    configured generation defaults, which is what it selects.
    """
    settings = services.settings
    gen = settings.generation
    out = []
    for emotion in DEFAULT_PARAMS:
        params = emotion_params(emotion, settings.analysis) or {}
        out.append({
            "id": emotion,
            "label": emotion.capitalize(),
            "prefix": "" if emotion == "neutral" else f"({emotion})",
            "temperature": params.get("temperature", gen.temperature),
            "topk": int(params.get("topk", gen.topk)),
        })
    return out
