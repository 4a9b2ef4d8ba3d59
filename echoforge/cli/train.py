"""``echoforge data prepare`` and ``echoforge train CONFIG`` (see :mod:`echoforge.train`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from echoforge.cli.common import console


def fail(message: str, code: int = 1):
    """One error line, never wrapped (so scripts and users see exactly one line), then exit."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)

log = logging.getLogger("echoforge.cli.train")
SMOKE_HINT = "to try the pipeline without them: `echoforge data tiny-model smoke` (a tiny random model, smoke test only)"


def _one_line(exc: BaseException, where: str) -> str:
    """One line for a failure of ``where`` (``data prepare`` / ``train``) that says what to do."""
    from echoforge.engines.base import EngineError

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    low = msg.lower()
    missing = any(k in low for k in ("not on this machine", "gated", "401", "403", "hf_hub_offline", "local_files_only",
                                     "cannot find the requested files", "repository not found", "couldn't connect"))  # fmt: skip
    if isinstance(exc, EngineError) or missing:
        key = "--model" if where == "data prepare" else "model.init_from"
        return f"{msg} — or point {key} at a local CSM directory; {SMOKE_HINT}"
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return msg
    return f"{where} failed: {exc.__class__.__name__}: {msg} (ECHOFORGE_LOG_LEVEL=DEBUG shows the traceback)"

data_app = typer.Typer(
    help="Training data: prepare conversation recordings for `echoforge train`.", no_args_is_help=True
)


@data_app.command("prepare")
def prepare(
    input_path: Annotated[
        Path,
        typer.Argument(
            help="Manifest (.jsonl/.csv), a folder with manifest.jsonl/.csv, or a folder of long recordings."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output directory for the shards.")],
    model: Annotated[
        str, typer.Option(help="CSM checkpoint (dir or hub id) whose tokenizer and Mimi codec to use.")
    ] = "sesame/csm-1b",
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of conversations held out.")] = 0.1,
    speakers: Annotated[
        int, typer.Option(min=1, help="Long recordings: cluster turns into this many speakers (simple diarization).")
    ] = 1,
    max_turn_s: Annotated[
        float, typer.Option(help="Longer recordings without start/end are segmented with VAD.")
    ] = 20.0,
    min_turn_s: Annotated[float, typer.Option(help="Shorter turns are skipped.")] = 0.3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Turn recordings + transcripts into sharded, memory-mapped CSM training samples."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from echoforge.train.preparation import prepare as run_prepare

    logging.getLogger("echoforge.train.data").setLevel(logging.ERROR)  # bad files are summarised below
    try:
        with Progress(
            TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("prepare", total=None)
            report = run_prepare(input_path, out, model, val_fraction=val_fraction, seed=seed, max_turn_s=max_turn_s,
                                 min_turn_s=min_turn_s, n_speakers=speakers,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))  # fmt: skip
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # e.g. the checkpoint/tokenizer could not load: one line, never a traceback
        log.debug("data prepare failed", exc_info=True)
        fail(_one_line(exc, "data prepare"))
    for split in ("train", "val"):
        s = report.stats[split]
        console.print(
            f"{split:5s}: {s['conversations']} conversations, {s['turns']} turns, {s['hours'] * 60:.1f} min, {s['frames']} frames"
        )
    if report.bad:
        console.print(f"[yellow]skipped {len(report.bad)} bad item(s):[/]")
        for b in report.bad:
            console.print(f"  [dim]{b['item']}[/]: {b['error']}")
    console.print(f"wrote {report.out_dir} (index.json, stats.md)")


def train(
    config: Annotated[str, typer.Argument(help="YAML config path, or a bundled name (csm-350m, finetune-lora, …).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. optim.lr=3e-4 lora.enabled=true")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate the config, print shapes and memory estimate, exit.")
    ] = False,
) -> None:
    """Train / fine-tune CSM. Multi-GPU: torchrun --nproc_per_node N -m echoforge.cli train CONFIG distributed=fsdp"""
    import os

    from echoforge.train.configs import describe, load_config

    try:
        cfg = load_config(config, overrides or [])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        summary = describe(cfg, world)
    except Exception as exc:
        fail(f"invalid config: {exc}", 2)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(summary)
    if dry_run:
        return
    from echoforge.logging import setup_logging
    from echoforge.train.trainer import train as run_train

    setup_logging(os.environ.get("ECHOFORGE_LOG_LEVEL", "INFO").upper())
    try:
        result = run_train(cfg, console=console, progress=True)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # missing/gated weights, CUDA errors, bad data: one line, never a traceback
        log.debug("train failed", exc_info=True)
        fail(_one_line(exc, "train"))
    if result["rank"] == 0:
        last = result["history"][-1] if result["history"] else {}
        val = " ".join(f"{k} {v:.4f}" for k, v in result["val"].items())
        console.print(f"done: step {result['step']} loss {last.get('loss', float('nan')):.4f} {val}")
        console.print(f"checkpoint: {result['checkpoint']} (load with CSMGenerator.from_pretrained / csm.model)")


@data_app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory for the smoke-test kit.")] = Path("smoke"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """SMOKE TEST ONLY: write a tiny random CSM (it speaks noise), a few espeak turns and a 2-step config.

    Then: `echoforge data prepare OUT/speech OUT/prepared --model OUT/tiny-csm`,
    `echoforge train OUT/smoke-train.yaml`, and
    `ECHOFORGE_CSM__MODEL=OUT/run/final echoforge eval --engine csm --engine espeak --set en_quick --codec OUT/tiny-csm`.
    """
    from echoforge.eval.smoke import write_smoke_kit

    try:
        paths = write_smoke_kit(out, seed)
    except Exception as exc:
        log.debug("tiny-model failed", exc_info=True)
        fail(f"could not write the tiny model: {exc.__class__.__name__}: {exc}")
    console.print(f"[yellow]SMOKE TEST ONLY[/]: random weights in {paths['model']} (it speaks noise).")
    speech = paths.get("speech")
    console.print("next:")
    if speech:
        console.print(f"  echoforge data prepare {speech} {paths['prepared']} --model {paths['model']}")
    else:
        console.print(f"  echoforge data prepare YOUR_RECORDINGS {paths['prepared']} --model {paths['model']}  (espeak-ng not found)")
    console.print(f"  echoforge train {paths['config']}")
    console.print(f"  ECHOFORGE_CSM__MODEL={Path(out) / 'run' / 'final'} echoforge eval --engine csm --engine espeak "
                  f"--set en_quick --codec {paths['model']}")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command()(train)
