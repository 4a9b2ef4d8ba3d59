"""Helpers shared by CLI modules: settings loading and clean error exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console

from echoforge.config import ConfigError, Settings, load_settings
from echoforge.logging import setup_logging

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear error line and exit (no traceback for the user)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def settings_from_cli(**overrides: Any) -> Settings:
    """Load settings, with CLI flags (non-None values) overriding every other source."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = load_settings(**clean)
    except ConfigError as exc:
        fail(str(exc), 2)
    setup_logging(settings.log_level, settings.log_format)
    return settings


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected errors (bad input, missing models, bad files) into one clean line."""
    from echoforge.engines.base import EngineError

    try:
        yield
    except typer.Exit:
        raise
    except (ValueError, EngineError, FileNotFoundError, PermissionError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
