"""``echoforge eval --engine csm --engine piper --set en_basic`` (see :mod:`echoforge.eval.suite`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from echoforge.cli.common import console, fail, settings_from_cli


def eval_command(
    engine: Annotated[
        list[str] | None,
        typer.Option("--engine", "-e", help="Engine to evaluate (repeat to compare): csm, piper, espeak."),
    ] = None,
    test_set: Annotated[
        str, typer.Option("--set", help="Bundled set (en_basic, en_quick) or a YAML path.")
    ] = "en_basic",
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for report.json and report.md.")] = Path(
        "reports/eval"
    ),
    reference: Annotated[
        Path | None, typer.Option(help="Recording of the target voice (CSM clones it; similarity is measured to it).")
    ] = None,
    reference_text: Annotated[str | None, typer.Option(help="Transcript of --reference.")] = None,
    codec: Annotated[
        str | None,
        typer.Option(
            help="Mimi codec (CSM or Mimi dir) for the token probe; default: the configured CSM model's; 'none' skips."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N sentences.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="CSM sampling temperature.")] = None,
) -> None:
    """Evaluate TTS engines: WER, speaker similarity, cross-turn consistency, emotion, token probe, speed."""
    from rich.markdown import Markdown

    from echoforge.eval.suite import run_suite

    settings = settings_from_cli()
    names = engine or ["csm", "piper", "espeak"]
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    codec_arg = None if (codec or "").lower() == "none" else (codec or "auto")
    try:
        with console.status(f"evaluating {', '.join(names)} on {test_set} …"):
            report = run_suite(names, test_set, out, settings, codec=codec_arg, reference=reference,
                               reference_text=reference_text, limit=limit, temperature=temperature)  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(Markdown((out / "report.md").read_text()))
    console.print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    if not any(r["available"] for r in report["results"]):
        fail("no engine could be evaluated")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
