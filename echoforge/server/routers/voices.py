"""Voices: list, read, create (multipart upload), update, delete, sample audio."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from echoforge.server.deps import RateLimitedDep, ServicesDep
from echoforge.server.errors import BadRequest, NotFound, PayloadTooLarge
from echoforge.server.schemas import ERROR_RESPONSES, UPLOAD_400, Voice, VoiceList, VoicePatch
from echoforge.server.services.voices import voice_engine

router = APIRouter(prefix="/api/voices", tags=["voices"], responses=ERROR_RESPONSES)

_MAX_FIELD = 500


@router.get("", response_model=VoiceList)
def list_voices(services: ServicesDep) -> dict:
    return {"voices": [v.public() for v in services.voices.list()], "engine": voice_engine(services.engine.info())}


@router.get("/{voice_id}", response_model=Voice)
def get_voice(voice_id: str, services: ServicesDep) -> dict:
    return services.voices.get(voice_id).public()


@router.get("/{voice_id}/sample", response_class=FileResponse, responses={200: {"content": {"audio/*": {}}}})
def voice_sample(voice_id: str, services: ServicesDep) -> FileResponse:
    voice = services.voices.get(voice_id)
    if voice.audio_path is None or not voice.audio_path.is_file():
        raise NotFound(f"voice {voice.id!r} has no sample audio")
    return FileResponse(voice.audio_path, media_type=voice.sample_mime, filename=f"{voice.id}{voice.audio_path.suffix}")


@router.post("", response_model=Voice, status_code=201, responses={400: UPLOAD_400})
async def create_voice(
    services: ServicesDep,
    _: RateLimitedDep,
    name: Annotated[str, Form(min_length=1, max_length=80)],
    audio: Annotated[UploadFile, File(description="Reference clip: wav, flac, ogg, mp3, m4a, webm…")],
    transcript: Annotated[str, Form(max_length=2000)] = "",
    gender: Annotated[str, Form(max_length=40)] = "",
    style: Annotated[str, Form(max_length=40)] = "",
    language: Annotated[str, Form(max_length=40)] = "",
    description: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
) -> dict:
    """Upload a reference clip (validated by decoding; stored under a generated name).

    Without a ``transcript`` the clip is transcribed with the bundled Whisper (CSM needs the
    transcript to use the clip as the voice prompt); a clip with no speech is ``400 no_speech``.
    Names are unique (case-insensitive): an existing name is ``409 voice_exists``.
    """
    limit = services.voices.max_upload_bytes
    data = await audio.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"audio file is larger than the {limit // (1024 * 1024)} MB limit", param="audio")
    if not data:
        raise BadRequest("audio file is empty", param="audio")
    voice = await run_in_threadpool(
        services.voices.create,
        name=name,
        audio=data,
        transcript=transcript,
        tags={"gender": gender, "style": style, "language": language},
        description=description,
    )
    return voice.public()


@router.patch("/{voice_id}", response_model=Voice)
def update_voice(voice_id: str, patch: VoicePatch, services: ServicesDep, _: RateLimitedDep) -> dict:
    return services.voices.update(voice_id, patch.model_dump(exclude_none=True)).public()


@router.delete("/{voice_id}", status_code=204, response_class=Response)
def delete_voice(voice_id: str, services: ServicesDep, _: RateLimitedDep) -> Response:
    services.voices.delete(voice_id)
    return Response(status_code=204)
