"""``echoforge agent`` (talk to the voice agent from a terminal) and ``echoforge kb build|query``.

The microphone is read with sounddevice (PortAudio); ``--input-file`` plays a WAV file into the
agent as if it were the microphone (headless use, tests), ``--output-file`` records the agent's voice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from echoforge.cli.common import console, fail, settings_from_cli, user_errors

kb_app = typer.Typer(help="The agent's knowledge base (RAG index over knowledge_base/).", no_args_is_help=True)

CHUNK_S = 0.02  # 20 ms of mic audio per push


def _agent_settings(settings: Any, **overrides: Any):
    from echoforge.agent.config import agent_settings
    from echoforge.config import ConfigError

    try:
        return agent_settings(settings, **overrides)
    except ConfigError as exc:
        fail(str(exc), 2)


# --- kb ---------------------------------------------------------------------------------------------


@kb_app.command("build")
def kb_build(
    kb_dir: Annotated[Path | None, typer.Option("--kb", help="Knowledge base folder (default: agent.knowledge_base, else <data_dir>/knowledge_base).")] = None,
    full: bool = typer.Option(False, "--full", help="Re-embed every file instead of only the changed ones."),
) -> None:
    """Index (incrementally) the .md/.txt/.pdf files of the knowledge base."""
    from echoforge.agent.rag import KnowledgeBase

    settings = settings_from_cli()
    agent = _agent_settings(settings, knowledge_base=kb_dir)
    with user_errors():
        kb_folder = agent.resolved_kb_dir(settings.data_dir)
        if not kb_folder.is_dir():
            raise FileNotFoundError(f"knowledge base folder not found: {kb_folder}")
        kb = KnowledgeBase.from_settings(agent, settings.data_dir)
        t0 = time.perf_counter()
        report = kb.build(full=full)
    console.print(
        f"[bold]knowledge base[/] {kb.kb_dir} → {kb.index_dir}: "
        f"{len(report.added)} added, {len(report.updated)} updated, {len(report.removed)} removed, "
        f"{len(report.unchanged)} unchanged; {report.embedded_chunks} chunks embedded, "
        f"{report.total_chunks} in the index ({time.perf_counter() - t0:.1f} s)"
    )
    typer.echo(json.dumps(report.as_dict()))


@kb_app.command("query")
def kb_query(
    question: str = typer.Argument(..., help="What to look up."),
    kb_dir: Annotated[Path | None, typer.Option("--kb", help="Knowledge base folder (default: agent.knowledge_base, else <data_dir>/knowledge_base).")] = None,
    top_k: int = typer.Option(None, "--top-k", min=1, max=20),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the passages the agent would retrieve for a question (builds the index if needed)."""
    from rich.table import Table

    from echoforge.agent.rag import KnowledgeBase

    settings = settings_from_cli()
    agent = _agent_settings(settings, knowledge_base=kb_dir, top_k=top_k)
    with user_errors():
        kb = KnowledgeBase.from_settings(agent, settings.data_dir)
        kb.build()
        result = kb.query(question, agent.top_k)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "query": question,
                    "relevant": result.relevant,
                    "fallback": result.fallback,
                    "threshold": agent.relevance_threshold,
                    "passages": [{"source": p.source, "score": round(p.score, 4), "text": p.text} for p in result.passages],
                }
            )
        )
        return
    table = Table(title=f"{question!r} — {'relevant' if result.relevant else 'nothing relevant: fallback persona'}")
    table.add_column("score", justify="right")
    table.add_column("source")
    table.add_column("passage")
    for p in result.passages:
        table.add_row(f"{p.score:.3f}", p.source, p.text[:160] + ("…" if len(p.text) > 160 else ""))
    console.print(table)


@kb_app.command("calibrate")
def kb_calibrate(
    questions: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help='JSON: {"questions": [{"q": ..., "source": file or null}]}')
    ],
    kb_dir: Annotated[Path | None, typer.Option("--kb", help="Knowledge base folder (default: agent.knowledge_base, else <data_dir>/knowledge_base).")] = None,
) -> None:
    """Suggest agent.relevance_threshold from labelled questions (answerable ones name their file)."""
    from echoforge.agent.rag import KnowledgeBase, calibrate_threshold

    settings = settings_from_cli()
    agent = _agent_settings(settings, knowledge_base=kb_dir)
    with user_errors():
        items = json.loads(questions.read_text())
        items = items["questions"] if isinstance(items, dict) else items
        kb_folder = agent.resolved_kb_dir(settings.data_dir)
        if not kb_folder.is_dir():
            raise FileNotFoundError(f"knowledge base folder not found: {kb_folder}")
        kb = KnowledgeBase.from_settings(agent, settings.data_dir)
        kb.build()
        result = calibrate_threshold(kb, items, agent.top_k)
    console.print(
        f"relevance_threshold [bold]{result['threshold']}[/] (now {agent.relevance_threshold}): balanced accuracy "
        f"{result['balanced_accuracy']:.0%}, recall@{result['k']} {result['recall_at_k']:.0%} over {len(items)} questions"
    )
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "rows"}))


# --- agent ------------------------------------------------------------------------------------------


class _Player:
    """A sounddevice output stream fed from a buffer that an interruption empties at once.

    With an :class:`~echoforge.agent.aec.EchoCanceller`, every buffer the device takes is handed to
    it with the time the device says it will be heard (``outputBufferDacTime``): the echo reference
    is what was really played, when it was played — not what the agent sent.
    """

    def __init__(self, sd: Any, sample_rate: int, aec: Any = None) -> None:
        self.sample_rate = sample_rate
        self.aec = aec
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self._current = np.zeros(0, np.float32)
        self.stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32", callback=self._callback)
        self.stream.start()

    def _callback(self, outdata, frames, time_info, _status) -> None:
        out = np.zeros(frames, np.float32)
        filled = 0
        with self._lock:
            while filled < frames:
                if not self._current.size:
                    if not self._chunks:
                        break
                    self._current = self._chunks.popleft()
                n = min(frames - filled, self._current.size)
                out[filled : filled + n] = self._current[:n]
                self._current = self._current[n:]
                filled += n
        outdata[:, 0] = out
        if self.aec is not None:
            dac = time_info.outputBufferDacTime or (time_info.currentTime + self.stream.latency)
            self.aec.play(out, self.sample_rate, dac)

    def play(self, audio: np.ndarray) -> None:
        with self._lock:
            self._chunks.append(audio)

    def flush(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._current = np.zeros(0, np.float32)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.stop()
            self.stream.close()


class _Display:
    """State, conversation log and latencies: a rich Live panel, or plain lines with ``--plain``."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.state = "starting"
        self.log: collections.deque[str] = collections.deque(maxlen=14)
        self.latency: dict[str, Any] = {}
        self.reply = ""
        self.level = 0.0

    def add(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.log.append(f"[dim]{stamp}[/] {line}")
        if not self.live:
            console.print(f"[dim]{stamp}[/] {line}")

    def render(self):
        from rich.panel import Panel
        from rich.table import Table

        colors = {"listening": "green", "thinking": "yellow", "speaking": "cyan", "paused": "magenta"}
        table = Table.grid(padding=(0, 1))
        bar = "█" * int(min(1.0, self.level * 8) * 20)
        table.add_row(f"[bold {colors.get(self.state, 'white')}]● {self.state.upper()}[/]", f"mic [green]{bar:<20}[/]")
        for line in self.log:
            table.add_row("", line)
        if self.reply:
            table.add_row("", f"[cyan]agent:[/] {self.reply[-200:]}")
        if self.latency:
            parts = [f"{k.removesuffix('_s')} {v * 1000:.0f} ms" for k, v in self.latency.items() if isinstance(v, float)]
            table.add_row("[bold]latency[/]", " · ".join(parts))
        return Panel(table, title="EchoForge agent — Ctrl+C to quit")


def _describe(frame: Any, display: _Display) -> None:
    from echoforge.agent import frames as F

    if isinstance(frame, F.StateFrame):
        display.state = frame.state
        if not display.live:
            display.add(f"state: {frame.state}")
    elif isinstance(frame, F.TranscriptionFrame) and frame.text:
        display.add(f"[bold]you:[/] {frame.text}")
        display.reply = ""
    elif isinstance(frame, F.RetrievalFrame):
        src = ", ".join(f"{p.source} ({p.score:.2f})" for p in frame.passages) or "nothing relevant (fallback persona)"
        display.add(f"[dim]kb: {src}[/]")
    elif isinstance(frame, F.LLMTextFrame):
        display.reply += frame.text
    elif isinstance(frame, F.AssistantTurnFrame):
        cut = " [red](interrupted)[/]" if frame.interrupted else ""
        cite = f" [dim](source: {', '.join(frame.sources)})[/]" if frame.sources else ""
        display.add(f"[cyan]agent:[/] {frame.text}{cut}{cite}")
        display.reply = ""
    elif isinstance(frame, F.MetricsFrame):
        display.latency = frame.latency
        display.add("[dim]latency " + json.dumps(frame.latency) + "[/]")
    elif isinstance(frame, F.ErrorFrame):
        display.add(f"[red]error:[/] {frame.error}")
    elif isinstance(frame, F.LogFrame):
        display.add(frame.message)


async def _run_agent(
    settings: Any,
    agent_cfg: Any,
    engine_name: str | None,
    input_file: Path | None,
    output_file: Path | None,
    realtime: bool,
    live: bool,
    timeout: float,
) -> dict[str, Any]:
    from echoforge.agent import frames as F
    from echoforge.agent.models import AgentModels
    from echoforge.agent.pipeline import LISTENING, VoiceAgent, word_aligner
    from echoforge.audio import load_audio, resample
    from echoforge.engines import create_engine

    sd = None
    if input_file is None:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as exc:
            raise ValueError(
                f"no usable microphone: sounddevice/PortAudio is not available ({exc}). "
                "Install PortAudio (apt-get install libportaudio2) or use --input-file WAV."
            ) from None
    display = _Display(live)
    console.print("[dim]loading models (STT, LLM, knowledge base, TTS)…[/]")
    engine = await asyncio.to_thread(create_engine, settings, engine_name)
    models = await asyncio.to_thread(AgentModels.load, agent_cfg, settings.data_dir)
    await asyncio.to_thread(models.warm_up)
    if agent_cfg.report_memory:
        console.print(f"[dim]memory: {models.memory_report(engine)}[/]")
    from echoforge.agent.pipeline import voice_prompts
    from echoforge.server.services.voices import VoiceStore

    prompts = voice_prompts(VoiceStore(settings.data_dir), engine, agent_cfg.speaker)  # a saved voice's pinned prompt
    aligner = word_aligner(engine, agent_cfg)  # barge-in: the words heard
    agent = VoiceAgent(engine, agent_cfg, models.stt, models.llm, models.kb, models.emotion_detector,
                       vad=models.new_detector(), voice_prompt=prompts, aligner=aligner)  # fmt: skip
    recorded: list[np.ndarray] = []
    player = aec = None
    if sd is not None and output_file is None:
        from echoforge.agent import aec as aec_mod

        if agent_cfg.echo_cancellation == "webrtc" or (agent_cfg.echo_cancellation == "auto" and aec_mod.available()):
            aec = aec_mod.EchoCanceller()
            console.print("[dim]echo cancellation: WebRTC AEC3 (reference: the audio the speaker plays)[/]")
        else:
            console.print("[yellow]no echo cancellation[/] (pip install 'echoforge[agent]' for livekit's WebRTC AEC); prefer headphones")
        player = _Player(sd, engine.sample_rate, aec)
    turns: list[dict[str, Any]] = []

    async def consume() -> None:
        async for frame in agent.events():
            if isinstance(frame, F.OutputAudioRawFrame):
                recorded.append(frame.audio)
                if player is not None:
                    player.play(frame.audio)
                continue
            if isinstance(frame, F.InterruptionFrame) and player is not None:
                player.flush()
            if isinstance(frame, F.AssistantTurnFrame):
                turns.append({"text": frame.text, "interrupted": frame.interrupted, "sources": frame.sources})
            _describe(frame, display)

    await agent.start()
    consumer = asyncio.create_task(consume())
    live_ctx = None
    if live:
        from rich.live import Live

        live_ctx = Live(display.render(), console=console, refresh_per_second=8, transient=False)
        live_ctx.__enter__()
    try:
        if input_file is not None:
            audio, sr = load_audio(str(input_file))
            audio = resample(audio, sr, 16_000)
            # Trailing silence so the last turn ends; a real mic would keep sending it.
            audio = np.concatenate([audio, np.zeros(int(16_000 * (agent_cfg.turn.silence_ms / 1000 + 1.0)), np.float32)])
            step = int(16_000 * CHUNK_S)
            t0 = time.monotonic()
            for i in range(0, audio.size, step):
                await agent.push_audio(audio[i : i + step], 16_000)
                display.level = float(np.sqrt(np.mean(np.square(audio[i : i + step])))) if i < audio.size else 0.0
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + (i + step) / 16_000 - time.monotonic()))
                else:
                    await asyncio.sleep(0)
                if live_ctx is not None:
                    live_ctx.update(display.render())
            deadline = time.monotonic() + timeout
            idle_since = None
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                if live_ctx is not None:
                    live_ctx.update(display.render())
                busy = agent.state != LISTENING or agent.llm.generating or agent.output.speaking
                busy = busy or agent.vad.detector.state != "quiet"
                idle_since = None if busy else (idle_since or time.monotonic())
                if idle_since is not None and time.monotonic() - idle_since > 0.5:
                    break
            else:
                raise RuntimeError(f"the agent did not finish within {timeout:.0f} s")
        else:
            assert sd is not None
            loop = asyncio.get_running_loop()
            mic: asyncio.Queue[np.ndarray] = asyncio.Queue()

            def on_audio(indata, _frames, time_info, _status) -> None:
                chunk = indata[:, 0].copy()
                if aec is not None:  # echo removed before the VAD ever sees it
                    adc = time_info.inputBufferAdcTime or (time_info.currentTime - stream.latency)
                    chunk = aec.capture(chunk, adc)
                loop.call_soon_threadsafe(mic.put_nowait, chunk)

            stream = sd.InputStream(samplerate=16_000, channels=1, dtype="float32", blocksize=480, callback=on_audio)
            with stream:
                while True:
                    chunk = await mic.get()
                    display.level = float(np.sqrt(np.mean(np.square(chunk))))
                    await agent.push_audio(chunk, 16_000)
                    if live_ctx is not None:
                        live_ctx.update(display.render())
    finally:
        if live_ctx is not None:
            live_ctx.__exit__(None, None, None)
        await agent.stop()
        await asyncio.sleep(0.05)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        if player is not None:
            player.close()
    if output_file is not None:
        import soundfile as sf

        out = np.concatenate(recorded) if recorded else np.zeros(0, np.float32)
        output_file.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(output_file), out, engine.sample_rate)
        console.print(f"wrote {out.size / engine.sample_rate:.2f} s of agent audio to {output_file}")
    return {"turns": turns, "latency": agent.latencies, "engine": engine.name}


def register(app: typer.Typer) -> None:
    """Add ``agent`` and the ``kb`` sub-app to the main CLI."""

    @app.command("agent")
    def agent_cmd(
        input_file: Annotated[
            Path | None, typer.Option("--input-file", "-i", exists=True, dir_okay=False, help="WAV file used as the microphone.")
        ] = None,
        output_file: Annotated[
            Path | None, typer.Option("--output-file", "-o", dir_okay=False, help="Write the agent's voice to this WAV.")
        ] = None,
        engine: str = typer.Option(None, "--engine", help="TTS engine: auto, csm, piper, espeak."),
        voice: str = typer.Option(None, "--voice", help="Engine voice id."),
        kb_dir: Annotated[Path | None, typer.Option("--kb", help="Knowledge base folder.")] = None,
        llm_base_url: str = typer.Option(None, "--llm-base-url", help="OpenAI-compatible endpoint (default: embedded SmolLM2)."),
        llm_model: str = typer.Option(None, "--llm-model"),
        max_tokens: int = typer.Option(None, "--max-tokens", min=1, max=4096),
        realtime: bool = typer.Option(True, "--realtime/--fast", help="Feed --input-file at real-time pace (like a mic)."),
        plain: bool = typer.Option(False, "--plain", help="Plain log lines instead of the live display."),
        timeout: float = typer.Option(180.0, "--timeout", help="With --input-file: give up after this many seconds."),
    ) -> None:
        """Talk to the voice agent: mic (or --input-file) → VAD → STT → RAG → LLM → TTS, with barge-in."""
        settings = settings_from_cli()
        cfg = _agent_settings(
            settings, voice=voice, knowledge_base=kb_dir, llm_base_url=llm_base_url, llm_model=llm_model, llm_max_tokens=max_tokens
        )
        live = not plain and input_file is None and console.is_terminal
        with user_errors():
            try:
                result = asyncio.run(_run_agent(settings, cfg, engine, input_file, output_file, realtime, live, timeout))
            except RuntimeError as exc:
                fail(str(exc))
        typer.echo(json.dumps(result))

    app.add_typer(kb_app, name="kb")
