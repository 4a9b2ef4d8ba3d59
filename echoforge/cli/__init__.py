"""The ``echoforge`` command line.

Core commands live in :mod:`echoforge.cli.core`; each part of the product adds its own
commands from its own module (``register(app)``), listed in ``_PARTS``.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

app = typer.Typer(
    name="echoforge",
    help="EchoForge — local-first conversational voice (CSM-1B) platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that contribute commands. A part that is not installed in this checkout is skipped
# (checked by module presence — import errors inside a present module still surface).
_PARTS = (
    "echoforge.cli.core",
    "echoforge.cli.csm",
    "echoforge.cli.watermark",
    "echoforge.cli.server",
    "echoforge.cli.analysis",
    "echoforge.cli.agent",
    "echoforge.cli.train",
    "echoforge.cli.eval",
    "echoforge.cli.wyoming",
)

for _name in _PARTS:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
