"""The ``echoforge`` command line.

Core commands live in :mod:`echoforge.cli.core`; each part of the product adds its own
commands from its own module (``register(app)``), listed in ``PARTS``. A command imports what
it runs when it runs: ``echoforge --help`` loads in ~0.2 s, where torch alone takes ~1 s.
"""

from __future__ import annotations

import typer

from echoforge.cli import agent, analysis, core, csm, server, train, watermark, wyoming
from echoforge.cli import eval as eval_

app = typer.Typer(
    name="echoforge",
    help="EchoForge — local-first conversational voice (CSM-1B) platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The modules that contribute commands, in the order their commands are listed.
PARTS = (core, csm, watermark, server, analysis, agent, train, eval_, wyoming)

for _part in PARTS:
    _part.register(app)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
