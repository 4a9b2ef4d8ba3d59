"""The Ray Serve application: the FastAPI app as ingress, the engine as a per-device deployment.

``build_app(settings)`` returns a bound application with two deployments:

* ``EchoForgeEngine`` — :class:`~echoforge.deploy.replica.EngineReplica`, one replica per device
  (``num_gpus: 1`` each on GPU machines, CPU replicas otherwise), each running the engine and its
  own synthesis service (CSM: the continuous-batching scheduler of that GPU). Replica count,
  autoscaling bounds and max ongoing requests per replica come from ``settings.ray``.
* ``EchoForgeIngress`` — the same FastAPI app as ``echoforge serve`` (routes, auth, rate limits,
  OpenAPI, studio, task queue and its workers), built in the replica by
  :func:`echoforge.server.app.create_app` with a :class:`~echoforge.deploy.remote.RemoteEngine`:
  every synthesis — ``/v1/audio/speech`` (bytes or SSE), ``/api/stream``, tasks, the agent's
  TTS — goes through a deployment handle and streams back chunk by chunk.

``serve run deploy/ray-serve.yaml`` / ``serve deploy`` use :func:`app_builder`;
``echoforge serve --ray`` uses :func:`run`.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import ray
from ray import serve

from echoforge.config import Settings, load_settings
from echoforge.deploy.remote import RemoteEngine, RemoteSynthesisService, ReplicaHeaderMiddleware
from echoforge.deploy.replica import EngineFactory, EngineReplica
from echoforge.logging import setup_logging
from echoforge.server.app import create_app

log = logging.getLogger("echoforge.deploy")

ENGINE_DEPLOYMENT = "EchoForgeEngine"
INGRESS_DEPLOYMENT = "EchoForgeIngress"
FALLBACK_ENGINES = ("piper", "espeak")


def replica_slots(settings: Settings) -> int:
    """Requests one engine replica runs at once (``ray.max_ongoing_requests`` or the engine's slots)."""
    if settings.ray.max_ongoing_requests:
        return settings.ray.max_ongoing_requests
    if settings.engine in FALLBACK_ENGINES:
        return settings.server.fallback_pool_size()
    return max(settings.server.workers, settings.csm.max_batch_size)


def _cluster_gpus() -> float:
    try:
        return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0
    except Exception:  # pragma: no cover - a cluster that cannot answer: plan for CPUs
        return 0.0


def engine_options(settings: Settings, autoscaling_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ray Serve options of the engine deployment, from ``settings.ray`` (and the cluster's GPUs).

    ``autoscaling_config``: Ray Serve's full ``autoscaling_config`` (every field passes through,
    validated by Ray); it replaces a fixed replica count. Missing ``target_ongoing_requests``
    defaults to one replica's slots, ``min_replicas`` / ``max_replicas`` to
    ``ray.autoscaling_min`` / ``ray.autoscaling_max`` when those are set.
    """
    r = settings.ray
    gpus = _cluster_gpus()
    num_gpus = r.num_gpus if r.num_gpus is not None else (1.0 if gpus else 0.0)
    slots = replica_slots(settings)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": r.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": slots,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 60.0,
        "graceful_shutdown_timeout_s": 15.0,
    }
    if autoscaling_config is not None or r.autoscaling_max is not None:
        auto: dict[str, Any] = {"target_ongoing_requests": max(1, slots)}
        if r.autoscaling_max is not None:
            auto.update(
                min_replicas=r.autoscaling_min if r.autoscaling_min is not None else 1, max_replicas=r.autoscaling_max
            )
        auto.update(autoscaling_config or {})
        options["autoscaling_config"] = auto
    else:  # one replica per device: the GPUs when replicas use them, else one (or what is configured)
        options["num_replicas"] = r.replicas or (max(1, int(gpus // num_gpus)) if num_gpus else 1)
    return options


def max_replicas(options: dict[str, Any]) -> int:
    auto = options.get("autoscaling_config")
    if auto:
        return int(auto.get("max_replicas") or auto.get("initial_replicas") or auto.get("min_replicas") or 1)
    return int(options["num_replicas"])


@serve.ingress()
class EchoForgeIngress:
    """The FastAPI app, with its engine on the ``EchoForgeEngine`` replicas."""

    def __init__(self, engine: Any, settings: Settings, capacity: int) -> None:
        self._engine_handle = engine
        self._settings = settings
        self._capacity = capacity

    async def __serve_build_asgi_app__(self) -> Any:
        setup_logging(self._settings.log_level, self._settings.log_format)
        ctx = serve.get_replica_context()
        description = await self._engine_handle.describe.remote()
        engine = RemoteEngine(
            self._engine_handle,
            description,
            capacity=self._capacity,
            app_name=ctx.app_name,
            deployment=ENGINE_DEPLOYMENT,
        )
        log.info(
            "ingress %s: engine %s on replicas of %s (%d streams at once)",
            ctx.replica_id.unique_id, engine.name, ENGINE_DEPLOYMENT, self._capacity,
        )  # fmt: skip
        app = create_app(self._settings, engine=engine, synthesis_factory=RemoteSynthesisService)
        app.add_middleware(ReplicaHeaderMiddleware, ingress_id=f"ingress-{ctx.replica_id.unique_id}")
        return app


def build_app(
    settings: Settings,
    *,
    engine_factory: EngineFactory | None = None,
    engine_options_override: dict | None = None,
    autoscaling_config: dict[str, Any] | None = None,
) -> Any:
    """The bound Ray Serve application for ``settings``.

    Args:
        settings: EchoForge settings; ``data_dir`` must be shared by every node of a cluster.
        engine_factory: builds each replica's engine (default: ``settings.engine``).
        engine_options_override: extra Ray Serve options for the engine deployment.
        autoscaling_config: Ray Serve's ``autoscaling_config`` for the engine replicas (passed through).

    Returns:
        A ``ray.serve.Application`` for ``serve.run``.
    """
    settings = settings.model_copy(update={"data_dir": Path(settings.data_dir).resolve()})
    options = {**engine_options(settings, autoscaling_config), **(engine_options_override or {})}
    capacity = replica_slots(settings) * max_replicas(options)
    engine = serve.deployment(EngineReplica, name=ENGINE_DEPLOYMENT).options(**options)
    ingress = serve.deployment(EchoForgeIngress, name=INGRESS_DEPLOYMENT).options(
        num_replicas=1,  # the in-process task queue workers live here; more need the Redis queue
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(256, 4 * capacity),  # HTTP streams are long-lived
        graceful_shutdown_timeout_s=15.0,
    )
    return ingress.bind(engine.bind(settings, engine_factory), settings, capacity)


def app_builder(args: dict[str, Any]) -> Any:
    """``import_path`` of ``serve run``/``serve deploy`` configs: ``args.settings`` overrides settings,
    ``args.autoscaling_config`` is the engine replicas' Ray Serve ``autoscaling_config``."""
    args = args or {}
    return build_app(load_settings(**args.get("settings", {})), autoscaling_config=args.get("autoscaling_config"))


def run(
    settings: Settings,
    *,
    address: str | None = None,
    host: str | None = None,
    port: int | None = None,
    autoscaling_config: dict[str, Any] | None = None,
) -> None:
    """``echoforge serve --ray``: start (or join) Ray, deploy, serve until Ctrl+C.

    Args:
        settings: EchoForge settings (``settings.ray`` sizes the deployment).
        address: a Ray cluster (``auto``, ``ray://head:10001``, ``host:6379``); None starts a local one.
        host, port: where Ray Serve's HTTP proxy listens (default: ``server.host``/``server.port``).
        autoscaling_config: Ray Serve's ``autoscaling_config`` for the engine replicas (``--autoscaling-config``).
    """
    address = address or settings.ray.address
    started = not ray.is_initialized()
    if started:
        init: dict[str, Any] = {"address": address} if address else {"num_cpus": settings.ray.num_cpus_local}
        ray.init(**init, log_to_driver=True)
    serve.start(http_options={"host": host or settings.server.host, "port": port or settings.server.port})
    app = build_app(settings, autoscaling_config=autoscaling_config)
    serve.run(app, name=settings.ray.app_name, route_prefix="/")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping the Ray Serve application %s", settings.ray.app_name)
    serve.delete(settings.ray.app_name)
    if started and not address:
        serve.shutdown()
        ray.shutdown()
