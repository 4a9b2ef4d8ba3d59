"""Launch a real EchoForge server for the tests: ``python serve_app.py '<json>'``.

JSON: ``{"port": N, "engine": "espeak"|"sine"|..., "settings": {...load_settings overrides}}``.
Registers the deterministic ``sine`` test engine and the ``espeak_probe`` concurrency probe first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import uvicorn  # noqa: E402

from echoforge.config import load_settings  # noqa: E402
from echoforge.engines import register_engine  # noqa: E402
from echoforge.logging import setup_logging  # noqa: E402
from echoforge.server.app import create_app  # noqa: E402

register_engine("sine", "sine_engine:SineEngine.from_settings")
register_engine("espeak_probe", "probe_engine:ProbeEspeakEngine.from_settings")


def main() -> None:
    spec = json.loads(sys.argv[1])
    settings = load_settings(**spec.get("settings", {}))
    level = spec.get("log_level")  # e.g. "DEBUG": everything, uvicorn and websockets included
    setup_logging(level or "INFO")
    app = create_app(settings, engine_name=spec.get("engine"))
    uvicorn.run(
        app, host="127.0.0.1", port=spec["port"], log_level=(level or "warning").lower(), timeout_graceful_shutdown=10
    )


if __name__ == "__main__":
    main()
