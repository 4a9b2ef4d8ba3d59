"""Engine registry: name → factory, and the ``auto`` choice.

Factories are referenced lazily by import path so that listing engines never imports
torch or a model. Each factory is a callable ``(settings) -> TTSEngine`` that raises
:class:`EngineUnavailable` with a clear reason when it cannot run on this machine.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from echoforge.engines.base import (
    BaseEngine,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    Segment,
    SynthesisRequest,
    TTSEngine,
    VoiceInfo,
)

if TYPE_CHECKING:
    from echoforge.config import Settings

log = logging.getLogger("echoforge.engines")

# name → "module:attribute" of a factory taking Settings.
_REGISTRY: dict[str, str] = {
    "csm": "echoforge.csm.engine:CSMEngine.from_settings",
    "piper": "echoforge.engines.piper:PiperEngine.from_settings",
    "espeak": "echoforge.engines.espeak:EspeakEngine.from_settings",
}
# The order ``auto`` tries them in.
AUTO_ORDER = ("csm", "piper", "espeak")


def register_engine(name: str, factory_path: str) -> None:
    """Register (or replace) an engine factory, e.g. ``register_engine("fake", "pkg.mod:make")``."""
    _REGISTRY[name] = factory_path


def engine_names() -> list[str]:
    return list(_REGISTRY)


def _factory(name: str) -> Callable[[Settings], TTSEngine]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; choose one of: auto, {', '.join(_REGISTRY)}") from None
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def create_engine(settings: Settings, name: str | None = None) -> TTSEngine:
    """Create the configured engine; ``auto`` falls back loudly when CSM cannot load."""
    choice = name or settings.engine
    if choice != "auto":
        return _factory(choice)(settings)
    reasons: list[str] = []
    for candidate in AUTO_ORDER:
        try:
            engine = _factory(candidate)(settings)
        except (EngineUnavailable, ImportError) as exc:
            # ImportError: the engine's optional dependencies are not installed.
            reasons.append(f"{candidate}: {exc}")
            continue
        if engine.is_fallback:
            log.warning(
                "CSM is not available — using the %s FALLBACK engine (not CSM). Reasons: %s",
                engine.name,
                " | ".join(reasons) or "n/a",
            )
        else:
            log.info("using the %s engine", engine.name)
        return engine
    raise EngineUnavailable("no TTS engine could start: " + " | ".join(reasons))


__all__ = [
    "AUTO_ORDER",
    "BaseEngine",
    "EngineError",
    "EngineInfo",
    "EngineUnavailable",
    "Segment",
    "SynthesisRequest",
    "TTSEngine",
    "VoiceInfo",
    "create_engine",
    "engine_names",
    "register_engine",
]
