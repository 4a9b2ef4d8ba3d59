"""FastAPI dependencies: the service container, authentication and rate limiting."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from echoforge.server.errors import RateLimited, Unauthorized
from echoforge.server.services.auth import ApiKeyStore, Principal, RateLimiter
from echoforge.server.services.queue import TaskQueue
from echoforge.server.services.synthesis import SynthesisService
from echoforge.server.services.voices import VoiceStore
from echoforge.server.services.worker import WorkerPool

if TYPE_CHECKING:
    from echoforge.config import Settings
    from echoforge.engines.base import TTSEngine

security_log = logging.getLogger("echoforge.security")


@dataclass
class Services:
    """Everything the routers use; built once in the app's lifespan."""

    settings: Settings
    engine: TTSEngine
    voices: VoiceStore
    queue: TaskQueue
    synthesis: SynthesisService
    keys: ApiKeyStore
    limiter: RateLimiter
    pool: WorkerPool | None
    model_load_s: float = 0.0
    started_at: float = field(default_factory=time.time)
    auth_failures: RateLimiter | None = None  # wrong/missing keys per client IP (server.auth_failures_per_minute)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key.strip() if x_api_key else None


def check_key(services: Services, key: str | None, client: str, route: str) -> Principal:
    """Validate ``key`` when auth is on; raise :class:`Unauthorized` (and log it) otherwise."""
    if not services.keys.required:
        return Principal(id=f"ip:{client}", authenticated=False)
    key_id = services.keys.verify(key)
    if key_id is None:
        security_log.warning("auth failure: %s key from %s on %s", "invalid" if key else "missing", client, route)
        wait = services.auth_failures.hit(f"ip:{client}") if services.auth_failures is not None else None
        if wait is not None:  # guessing keys: slow the client down
            security_log.warning("auth failures rate-limited: %s on %s", client, route)
            raise RateLimited(
                f"too many requests with a missing or wrong API key from this address; retry in {wait:.0f} s",
                retry_after=wait,
            )
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            if not key
            else "invalid API key"
        )
    return Principal(id=key_id, authenticated=True)


def check_rate(services: Services, principal: Principal, route: str) -> None:
    wait = services.limiter.hit(principal.id)
    if wait is not None:
        security_log.warning("rate limit hit: %s on %s", principal.id, route)
        raise RateLimited(
            f"rate limit of {services.settings.server.rate_limit_per_minute} requests/minute exceeded; retry in {wait:.1f} s",
            retry_after=wait,
        )


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def authenticate(request: Request) -> Principal:
    services = get_services(request)
    key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    principal = check_key(services, key, _client(request), request.url.path)
    request.state.principal = principal
    return principal


async def rate_limit(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Counted against the caller's budget: every request that synthesizes or writes."""
    check_rate(get_services(request), principal, request.url.path)
    return principal


Authenticated = Depends(authenticate)
RateLimitedDep = Annotated[Principal, Depends(rate_limit)]
