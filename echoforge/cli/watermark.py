"""``echoforge watermark detect FILE`` / ``echoforge watermark apply IN OUT``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from echoforge.cli.common import console, fail


def _load(path: Path):
    from echoforge.audio import AudioDecodeError, load_audio

    try:
        return load_audio(path)
    except AudioDecodeError as exc:
        fail(f"{path}: {exc}", 2)


def detect(
    file: Annotated[Path, typer.Argument(help="Audio file to check.")],
    key: Annotated[str | None, typer.Option(help="Private key (default: the public key).")] = None,
) -> None:
    """Say whether FILE carries an EchoForge/CSM watermark."""
    from echoforge.csm import watermark

    audio, sr = _load(file)
    result = watermark.detect(audio, sr, key)
    verdict = "[green]watermark detected[/]" if result.detected else "[yellow]no watermark detected[/]"
    console.print(f"{verdict}  score {result.score:.2f}  ({result.method}; {result.note})")


def apply(
    source: Annotated[Path, typer.Argument(help="Input audio file.")],
    output: Annotated[Path, typer.Argument(help="Output file (format from the suffix).")],
    key: Annotated[str | None, typer.Option(help="Private key (default: the public key).")] = None,
) -> None:
    """Write a watermarked copy of SOURCE to OUTPUT."""
    from echoforge.audio import save_audio
    from echoforge.csm import watermark

    audio, sr = _load(source)
    try:
        save_audio(output, watermark.apply(audio, sr, key), sr)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"[green]wrote[/] {output}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Watermark generated audio, or check a file for one.", no_args_is_help=True)
    group.command()(detect)
    group.command()(apply)
    app.add_typer(group, name="watermark")
