"""The EchoForge task API: generate / conversations → 202 + task; status, audio, cancel, list."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from echoforge.audio import MIME_TYPES
from echoforge.server.deps import RateLimitedDep, Services, ServicesDep
from echoforge.server.errors import Conflict, NotFound
from echoforge.server.schemas import (
    ERROR_RESPONSES,
    TEXT_400,
    ConversationRequest,
    GenerateRequest,
    Task,
    TaskCreated,
    TaskList,
)
from echoforge.server.services.captions import CAPTION_MIME, captions_text
from echoforge.server.services.queue import TaskRecord
from echoforge.text import audio_budget_ms

router = APIRouter(prefix="/api", tags=["tasks"], responses=ERROR_RESPONSES)


def _created(task: TaskRecord) -> dict:
    return {
        "task_id": task.id,
        "status": task.status,
        "status_url": f"/api/tasks/{task.id}",
        "audio_url": f"/api/tasks/{task.id}/audio",
    }


def _check_text(services: Services, text: str, param: str, **audio) -> str:
    """The same rule as /v1 and the WebSocket (SynthesisService.check_text): 400 now, not a failed task later."""
    return services.synthesis.check_text(text, param, **audio)


def _task(services: Services, task_id: str) -> TaskRecord:
    task = services.queue.get(task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} not found", param="task_id", code="task_not_found")
    return task


@router.post("/generate", status_code=202, response_model=TaskCreated, responses={400: TEXT_400})
def generate(body: GenerateRequest, services: ServicesDep, _: RateLimitedDep) -> dict:
    """Queue one utterance; poll ``status_url`` and fetch ``audio_url`` when done."""
    body.text = _check_text(services, body.text, "text", speed=body.speed, max_audio_length_ms=body.max_audio_length_ms)
    if body.max_audio_length_ms is None:  # the audio cap follows from the text: every accepted text is spoken in full
        floor = services.settings.generation.max_audio_length_ms
        body.max_audio_length_ms = audio_budget_ms(body.text, body.speed or 1.0, floor_ms=floor)
    services.voices.get(body.voice)  # 404 now rather than a failed task later
    for i, turn in enumerate(body.context):
        turn.text = _check_text(services, turn.text, f"context.{i}.text", label=f"context turn {i + 1} text", max_audio_length_ms=0)
        if turn.voice:
            services.voices.get(turn.voice)
    task = services.queue.enqueue("generate", body.model_dump(), body.format)
    return _created(task)


@router.post("/conversations", status_code=202, response_model=TaskCreated, responses={400: TEXT_400})
def conversation(body: ConversationRequest, services: ServicesDep, _: RateLimitedDep) -> dict:
    """Queue a multi-speaker script rendered into one clip."""
    for i, turn in enumerate(body.turns):
        turn.text = _check_text(services, turn.text, f"turns.{i}.text", label=f"turn {i + 1} text")
        services.voices.get(turn.voice)
    task = services.queue.enqueue("conversation", body.model_dump(), body.format)
    return _created(task)


@router.get("/tasks", response_model=TaskList)
def list_tasks(services: ServicesDep, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict:
    return {"tasks": [t.public() for t in services.queue.recent(limit)]}


@router.get("/tasks/{task_id}", response_model=Task)
def get_task(task_id: str, services: ServicesDep) -> dict:
    return _task(services, task_id).public()


@router.get("/tasks/{task_id}/audio", response_class=Response, responses={200: {"content": {"audio/*": {}}}})
def task_audio(task_id: str, services: ServicesDep) -> Response:
    task = _task(services, task_id)
    if task.status != "done":
        raise Conflict(
            f"task {task_id} is {task.status}; audio is available when it is done", code=f"task_{task.status}"
        )
    data = services.queue.result(task_id)
    if data is None:
        raise NotFound(
            f"the audio of task {task_id} has expired (results are kept {services.settings.server.result_ttl_hours:g} h)"
        )
    return Response(
        data,
        media_type=MIME_TYPES[task.format],
        headers={
            "Content-Disposition": f'attachment; filename="{task_id}.{"ogg" if task.format == "opus" else task.format}"'
        },
    )


@router.get(
    "/tasks/{task_id}/captions",
    response_class=Response,
    responses={200: {"content": {"application/x-subrip": {}, "text/vtt": {}, "application/json": {}}}},
)
def task_captions(
    task_id: str,
    services: ServicesDep,
    format: Annotated[Literal["srt", "vtt", "json"], Query(description="srt, vtt or json (the words)")] = "vtt",
) -> Response:
    """The captions of a done task created with ``timestamps: true``: SRT, WebVTT or the word timings."""
    task = _task(services, task_id)
    if task.status != "done":
        raise Conflict(
            f"task {task_id} is {task.status}; captions are available when it is done", code=f"task_{task.status}"
        )
    words = task.timings.get("words")
    if words is None:
        raise NotFound(
            f"task {task_id} was created without timestamps; create it with \"timestamps\": true",
            param="task_id",
            code="no_timestamps",
        )
    if format == "json":
        return JSONResponse({"words": words})
    return Response(
        captions_text(words, format),
        media_type=CAPTION_MIME[format],
        headers={"Content-Disposition": f'attachment; filename="{task_id}.{format}"'},
    )


@router.delete(
    "/tasks/{task_id}",
    response_model=Task,
    responses={200: {"description": "The task after cancelling: `cancelled`, or unchanged when it had already finished"}},
)
def cancel_task(task_id: str, services: ServicesDep, _: RateLimitedDep) -> dict:
    """Cancel a queued or running task; a finished task is returned unchanged.

    DELETE cancels, it does not remove: the task stays readable at ``GET /api/tasks/{task_id}``
    (status ``cancelled``) until it expires with the other results.
    """
    _task(services, task_id)
    task = services.queue.cancel(task_id)
    assert task is not None
    return task.public()
