"""Server commands: ``serve``, ``worker``, ``keys create|list|revoke``, ``backup``, ``restore``."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from echoforge.cli.common import console, fail, settings_from_cli, user_errors

keys_app = typer.Typer(help="Manage API keys (stored hashed in the data dir).", no_args_is_help=True)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port).")] = None,
    engine: Annotated[str | None, typer.Option(help="auto | csm | piper | espeak")] = None,
    reload: Annotated[bool, typer.Option("--reload", help="Restart on code changes (development).")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="Serve on Ray Serve: one engine replica per device (needs the 'ray' extra; sized by the ray.* settings).")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join with --ray: auto, ray://head:10001 or host:6379 (default: ray.address, else a local Ray instance).")] = None,
    replicas: Annotated[int | None, typer.Option(min=1, max=1024, help="With --ray: engine replicas (default: ray.replicas, else one per GPU).")] = None,
    autoscaling_config: Annotated[str | None, typer.Option(help="With --ray: Ray Serve's autoscaling_config for the engine replicas, as JSON or a JSON/YAML file (every Ray field passes through, e.g. '{\"min_replicas\": 1, \"max_replicas\": 4, \"upscale_delay_s\": 5}').")] = None,
) -> None:
    """Start the EchoForge server: REST + OpenAI-compatible API, WebSocket streaming, web studio."""
    import uvicorn

    settings = settings_from_cli()
    host = host or settings.server.host
    port = port or settings.server.port
    console.print(f"EchoForge on [bold]http://{host}:{port}[/]  (API docs: /docs)")
    with user_errors():
        if (replicas is not None or autoscaling_config) and not (ray or ray_address):
            raise ValueError("--replicas and --autoscaling-config need --ray")
        if ray or ray_address:
            try:
                from echoforge.deploy.app import run as run_on_ray
            except ImportError as exc:
                fail(f"--ray needs Ray Serve ({exc.name} is missing): pip install 'echoforge[ray]'")
            if engine:
                settings = settings.model_copy(update={"engine": engine})
            if replicas is not None:
                settings = settings.model_copy(update={"ray": settings.ray.model_copy(update={"replicas": replicas})})
            autoscaling = _autoscaling_config(autoscaling_config) if autoscaling_config else None
            run_on_ray(settings, address=ray_address, host=host, port=port, autoscaling_config=autoscaling)
            return
        if reload:
            if engine:
                os.environ["ECHOFORGE_ENGINE"] = engine
            uvicorn.run(
                "echoforge.server.app:create_app", factory=True, host=host, port=port, reload=True, log_level="info"
            )
            return
        from echoforge.server.app import create_app

        app = create_app(settings, engine_name=engine)
        # The metrics middleware's `echoforge.access` logs each request (with its request id), not uvicorn.
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), timeout_graceful_shutdown=15,
                    access_log=False)  # fmt: skip


def _autoscaling_config(value: str) -> dict:
    """``--autoscaling-config``: inline JSON, or a JSON/YAML file holding the mapping."""
    import json
    from pathlib import Path

    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--autoscaling-config: {value!r} is neither JSON nor a file")
        text = path.read_text(encoding="utf-8")
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--autoscaling-config is not JSON or YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("--autoscaling-config must be a mapping such as {\"min_replicas\": 1, \"max_replicas\": 4}")
    return config


def worker(
    engine: Annotated[str | None, typer.Option(help="auto | csm | piper | espeak")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Concurrent tasks (default: server.workers for CSM, server.fallback_concurrency for Piper/espeak).")] = None,
) -> None:
    """Run a queue worker process for the Redis backend (scale out over processes / GPUs)."""
    from echoforge.server.app import load_engine
    from echoforge.server.services.queue_factory import make_queue
    from echoforge.server.services.synthesis import SynthesisService
    from echoforge.server.services.voices import VoiceStore
    from echoforge.server.services.worker import TaskRunner, WorkerPool

    settings = settings_from_cli()
    if settings.server.queue_backend != "redis":
        fail(
            "`echoforge worker` needs the Redis queue: set ECHOFORGE_SERVER__QUEUE_BACKEND=redis (and server.redis_url); "
            "the SQLite queue is worked by the server process itself"
        )
    with user_errors():
        eng, _ = load_engine(settings, engine)
        s = settings.server
        voices = VoiceStore(
            settings.data_dir, max_upload_seconds=s.max_upload_seconds, max_upload_bytes=int(s.max_upload_mb * 2**20)
        )
        queue = make_queue(settings)
        synthesis = SynthesisService(eng, voices, settings)
        synthesis.warm_up()
        n = threads or synthesis.concurrency
        pool = WorkerPool(queue, TaskRunner(queue, synthesis, settings), n)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        pool.start()
        console.print(f"worker {pool.worker_id}: {n} thread(s) on {s.redis_url} — Ctrl+C to stop")
        stop.wait()
        console.print("stopping: finishing or re-queueing running tasks…")
        pool.stop(grace_s=10.0)
        synthesis.close()
        queue.close()


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="A label for the key (who/what uses it).")] = "") -> None:
    """Create an API key. The key is shown once; only its hash is stored."""
    from echoforge.server.services.auth import ApiKeyStore

    settings = settings_from_cli()
    key, entry = ApiKeyStore(settings.data_dir).create(name)
    console.print(
        f"created key [bold]{entry['id']}[/] {('(' + name + ')') if name else ''} — copy it now, it is not shown again:"
    )
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (ids, names, prefixes — never the keys)."""
    from echoforge.server.services.auth import ApiKeyStore

    settings = settings_from_cli()
    entries = ApiKeyStore(settings.data_dir).list()
    table = Table("id", "name", "prefix", "created", "status")
    for e in entries:
        table.add_row(
            e["id"], e.get("name", ""), e["prefix"] + "…", e["created_at"], "revoked" if e["revoked"] else "active"
        )
    console.print(table if entries else "no API keys (the server is open unless server.api_keys is set)")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (k_…) or its prefix.")]) -> None:
    """Revoke an API key (takes effect at once, also in a running server)."""
    from echoforge.server.services.auth import ApiKeyStore

    settings = settings_from_cli()
    if not ApiKeyStore(settings.data_dir).revoke(key_id):
        fail(f"no active key {key_id!r} (see `echoforge keys list`)")
    console.print(f"revoked {key_id}")


def backup(
    file: Annotated[Path, typer.Argument(help="Archive to write (.tar.gz).")],
    results: Annotated[bool, typer.Option("--results/--no-results", help="Also include finished task audio.")] = False,
) -> None:
    """Back up voices, tasks, API keys and config into FILE."""
    from echoforge.server.services.backup import create_backup

    settings = settings_from_cli()
    with user_errors():
        manifest = create_backup(settings, file, include_results=results)
    console.print(f"wrote {file}: {', '.join(manifest['contents']) or 'settings only'}")


def restore(
    file: Annotated[Path, typer.Argument(help="Archive made by `echoforge backup`.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Restore a backup into the data dir (stop the server first)."""
    from echoforge.server.services.backup import restore_backup

    settings = settings_from_cli()
    with user_errors():
        manifest = restore_backup(settings, file, force=force)
    console.print(f"restored {', '.join(manifest['contents'])} into {settings.data_dir}")
    if "config_skipped" in manifest:
        console.print(f"[yellow]config not restored:[/] {manifest['config_skipped']}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.add_typer(keys_app, name="keys")
    app.command()(backup)
    app.command()(restore)
