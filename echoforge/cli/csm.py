"""``echoforge converse``: render a multi-speaker script, each turn fed back as context.

Script format (YAML; paths are relative to the script)::

    speakers:
      0: {prompt: alice.wav, transcript: "What Alice says in alice.wav."}
      1: {prompt: bob.wav, transcript: "What Bob says in bob.wav."}
    turns:
      - {speaker: 0, text: "Hey, how are you doing?"}
      - {speaker: 1, text: "Pretty good, pretty good."}
    # optional: temperature, topk, seed, pause_ms, max_context_turns, max_audio_length_ms

Works with any engine; CSM uses the prompts and earlier turns as context (voice stays stable),
the fallbacks just read the lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from echoforge.cli.common import console, settings_from_cli, user_errors


def load_script(path: Path, sample_rate: int) -> tuple[list[Any], dict[int, Any], dict[str, Any]]:
    """Parse a conversation script -> (turns, per-speaker prompt segments, options).

    Raises:
        ValueError: malformed script (the message says which entry).
        FileNotFoundError: a prompt clip is missing.
    """
    import yaml

    from echoforge.audio import load_audio
    from echoforge.conversation import Turn
    from echoforge.engines.base import Segment

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("turns"), list) or not data["turns"]:
        raise ValueError(f"{path}: needs a non-empty 'turns' list")
    prompts: dict[int, Segment] = {}
    for key, spec in (data.get("speakers") or {}).items():
        if not isinstance(spec, dict) or "prompt" not in spec or "transcript" not in spec:
            raise ValueError(f"{path}: speaker {key!r} needs 'prompt' (audio file) and 'transcript'")
        clip = Path(spec["prompt"])
        clip = clip if clip.is_absolute() else path.parent / clip
        if not clip.is_file():
            raise FileNotFoundError(f"{path}: prompt clip for speaker {key} not found: {clip}")
        audio, sr = load_audio(clip, sample_rate, max_seconds=120)
        # pinned: the speaker's voice prompt stays in CSM's window however long the script gets
        prompts[int(key)] = Segment(
            speaker=int(key), text=str(spec["transcript"]), audio=audio, sample_rate=sr, pinned=True
        )
    turns = []
    for i, t in enumerate(data["turns"]):
        if not isinstance(t, dict) or "speaker" not in t or not str(t.get("text", "")).strip():
            raise ValueError(f"{path}: turn {i + 1} needs 'speaker' and non-empty 'text'")
        turns.append(Turn(speaker=int(t["speaker"]), text=str(t["text"]), voice=t.get("voice")))
    keys = ("temperature", "topk", "seed", "pause_ms", "max_context_turns", "max_audio_length_ms")
    return turns, prompts, {k: data[k] for k in keys if k in data}


def converse(
    script: Annotated[Path, typer.Argument(help="Conversation script (YAML).", exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output audio file.")] = Path("conversation.wav"),
    engine: Annotated[str | None, typer.Option(help="auto | csm | piper | espeak")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0)] = None,
    topk: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed; turn i uses seed + i.")] = None,
    pause_ms: Annotated[int | None, typer.Option(help="Silence between turns.")] = None,
) -> None:
    """Render a multi-speaker conversation script into one audio file."""
    from echoforge.audio import save_audio
    from echoforge.conversation import render_conversation
    from echoforge.engines import create_engine

    settings = settings_from_cli(engine=engine)
    with user_errors():
        tts = create_engine(settings)
        turns, prompts, opts = load_script(script, tts.sample_rate)
        cli = {"temperature": temperature, "topk": topk, "seed": seed, "pause_ms": pause_ms}
        opts.update({k: v for k, v in cli.items() if v is not None})
        opts.setdefault("temperature", settings.generation.temperature)
        opts.setdefault("topk", settings.generation.topk)
        info = tts.info()
        label = info.name + (" (fallback, not CSM — prompts/context ignored)" if info.is_fallback else "")
        console.print(
            f"[dim]engine:[/] {label}  [dim]turns:[/] {len(turns)}  [dim]speakers with prompts:[/] {sorted(prompts)}"
        )
        with Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console,
        ) as progress:  # fmt: skip
            task = progress.add_task("rendering turns", total=len(turns))
            audio = render_conversation(
                tts, turns, prompts, on_turn=lambda done, total: progress.update(task, completed=done), **opts
            )
        save_audio(output, audio, tts.sample_rate)
        console.print(f"wrote {output} ({audio.size / tts.sample_rate:.1f} s)")


def register(app: typer.Typer) -> None:
    app.command()(converse)
