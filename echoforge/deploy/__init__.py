"""EchoForge on Ray Serve: the FastAPI app as ingress, one engine replica per device.

Optional extra ``[ray]`` (``ray[serve]``). ``echoforge serve --ray`` starts or joins a Ray
cluster and deploys :func:`echoforge.deploy.app.build_app`; ``serve run deploy/ray-serve.yaml``
does the same from a config file. See ``docs/deployment.md`` (Ray Serve).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app_builder", "build_app", "run"]


def __getattr__(name: str) -> Any:  # Ray is imported only when the deployment is used
    if name in __all__:
        from echoforge.deploy import app

        return getattr(app, name)
    raise AttributeError(name)
