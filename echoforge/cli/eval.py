"""``echoforge eval --engine piper --engine espeak`` (see :mod:`echoforge.eval.suite`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from echoforge.cli.common import console, settings_from_cli


def fail(message: str, code: int = 1):
    """One error line, never wrapped (so scripts and users see exactly one line), then exit."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def eval_command(
    engine: Annotated[
        list[str] | None,
        typer.Option("--engine", "-e", help="Engine to evaluate (repeat to compare): csm, piper, espeak."),
    ] = None,
    test_set: Annotated[
        str, typer.Option("--set", help="Bundled set (en_standard, en_basic, en_quick) or a YAML path.")
    ] = "en_standard",
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
    control: Annotated[
        list[str] | None,
        typer.Option(help="Negative controls that must rank last, flagged (noise, silence); default: noise."),
    ] = None,
    controls: Annotated[bool, typer.Option("--controls/--no-controls", help="Add the negative controls.")] = True,
) -> None:
    """Evaluate TTS engines: WER, speaker similarity, cross-turn consistency, emotion, token probe, speed."""
    from rich.markdown import Markdown

    from echoforge.eval.suite import run_suite

    settings = settings_from_cli()
    names = engine or ["csm", "piper", "espeak"]
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    codec_arg = None if (codec or "").lower() == "none" else (codec or "auto")
    from echoforge.eval.controls import CONTROLS

    ctl = tuple(control or ["noise"]) if controls else ()
    bad = [c for c in ctl if c not in CONTROLS]
    if bad:
        fail(f"unknown control {bad[0]!r} (controls: {', '.join(CONTROLS)})", 2)
    try:
        with console.status(f"evaluating {', '.join(names)} on {test_set} …"):
            report = run_suite(names, test_set, out, settings, codec=codec_arg, reference=reference,
                               reference_text=reference_text, limit=limit, temperature=temperature,
                               controls=ctl)  # fmt: skip
    except typer.Exit:
        raise
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:  # e.g. the ASR model could not load: one line, never a traceback
        logging.getLogger("echoforge.eval").debug("eval failed", exc_info=True)
        fail(f"{exc.__class__.__name__}: {exc}")
    console.print(Markdown((out / "report.md").read_text()))
    console.print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    real = [r for r in report["results"] if "(control)" not in r["engine"]]
    if not any(r["available"] for r in real):
        why = "; ".join(f"{r['engine']}: {r['error']}" for r in real if not r["available"])
        fail(f"no engine could be evaluated ({why})" if why else "no engine could be evaluated")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
