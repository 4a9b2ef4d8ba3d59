"""``echoforge analyze FILE``: energy, pitch, rate, pauses and emotion of a clip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from echoforge.cli.common import console, fail


def analyze(
    file: Annotated[Path, typer.Argument(help="Audio file (wav, flac, mp3, ogg, …).")],
    transcript: Annotated[str | None, typer.Option(help="What is said (improves the emotion estimate).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Save a PNG of pitch and energy over time.")] = None,
) -> None:
    """Analyse how FILE sounds."""
    from echoforge.analysis import analyze_audio
    from echoforge.audio import AudioDecodeError, load_audio

    try:
        audio, sr = load_audio(file)
    except AudioDecodeError as exc:
        fail(f"{file}: {exc}", 2)
    report = analyze_audio(audio, sr, transcript)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        p, e = report.prosody, report.emotion
        table = Table(title=f"{file.name} — {p.duration_s:.2f} s")
        table.add_column("measure")
        table.add_column("value")
        rows = [
            ("speech", "yes" if p.is_speech else "no (silence, noise or music)"),
            ("energy", f"{p.energy_db:.1f} dBFS (± {p.energy_std_db:.1f} dB)"),
            ("pitch", f"{p.pitch_mean_hz:.0f} Hz (range {p.pitch_min_hz:.0f}–{p.pitch_max_hz:.0f} Hz, variation {p.pitch_std_semitones:.1f} st)"),
            ("voiced", f"{p.voiced_ratio:.0%}"),
            ("speaking rate", f"{p.speaking_rate:.2f} {p.rate_unit}"),
            ("articulation rate", f"{p.articulation_rate:.2f} syllables/s"),
            ("pauses", f"{p.pause_count} (mean {p.pause_mean_s:.2f} s)"),
            ("emotion", f"{e.label} (confidence {e.confidence:.0%}; arousal {e.arousal:+.2f}, valence {e.valence:+.2f})"),
            ("suggested parameters", json.dumps(report.suggested_params) if report.suggested_params else "engine defaults"),
        ]
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if plot is not None:
        _plot(audio, sr, plot)
        console.print(f"[green]wrote[/] {plot}")


def _plot(audio, sr: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'echoforge[analysis]'")
    import numpy as np

    from echoforge.analysis.prosody import energy_track, pitch_track

    t_p, f0 = pitch_track(audio, sr)
    t_e, e_db = energy_track(audio, sr)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    ax1.plot(t_p, np.where(f0 > 0, f0, np.nan), ".", markersize=2)
    ax1.set_ylabel("pitch (Hz)")
    ax2.plot(t_e, e_db, linewidth=0.8)
    ax2.set_ylabel("energy (dBFS)")
    ax2.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    app.command()(analyze)
