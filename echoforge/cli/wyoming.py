"""``echoforge wyoming``: a Wyoming TTS server for Home Assistant (extra ``[wyoming]``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from echoforge.cli.common import console, fail, settings_from_cli, user_errors


def wyoming(
    uri: Annotated[str, typer.Option(help="Where to listen: tcp://HOST:PORT or unix://PATH (tcp://0.0.0.0:10200 for other machines).")] = "tcp://127.0.0.1:10200",
    engine: Annotated[str | None, typer.Option(help="auto | csm | piper | espeak")] = None,
    voice: Annotated[str, typer.Option(help="Voice for requests that name none (id, name or OpenAI alias).")] = "alloy",
    zeroconf: Annotated[str | None, typer.Option(help="Announce the server over mDNS under this name so Home Assistant discovers it (needs `pip install zeroconf`).")] = None,
    samples_per_chunk: Annotated[int, typer.Option(min=64, help="Largest audio-chunk event, in samples.")] = 1024,
) -> None:
    """Serve EchoForge voices over the Wyoming protocol (Home Assistant Assist, streaming included)."""
    try:
        from echoforge.integrations.wyoming import WyomingTTS
    except ImportError as exc:
        fail(f"the Wyoming server needs the `wyoming` package: pip install 'echoforge[wyoming]' ({exc})")
    from echoforge.server.app import load_engine
    from echoforge.server.errors import ApiError
    from echoforge.server.services.synthesis import SynthesisService
    from echoforge.server.services.voices import VoiceStore

    settings = settings_from_cli()
    with user_errors():
        if not uri.startswith(("tcp://", "unix://")):
            raise ValueError(f"--uri must be tcp://HOST:PORT or unix://PATH, not {uri!r}")
        eng, _ = load_engine(settings, engine)
        s = settings.server
        voices = VoiceStore(
            settings.data_dir, max_upload_seconds=s.max_upload_seconds, max_upload_bytes=int(s.max_upload_mb * 2**20)
        )
        synthesis = SynthesisService(eng, voices, settings)
        try:
            tts = WyomingTTS(synthesis, default_voice=voice, samples_per_chunk=samples_per_chunk)
            synthesis.warm_up()
            console.print(f"EchoForge Wyoming server on [bold]{uri}[/] (engine {tts.engine_label()}) — Ctrl+C to stop")
            asyncio.run(_run(tts, uri, zeroconf))
        except ApiError as exc:  # e.g. an unknown --voice
            fail(exc.message)
        except KeyboardInterrupt:
            pass
        finally:
            synthesis.close()


async def _run(tts, uri: str, zeroconf: str | None) -> None:  # noqa: ANN001 - WyomingTTS, imported lazily
    from echoforge.integrations.wyoming import serve

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # docker stop / Ctrl+C: stop serving, exit 0
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(tts, uri, zeroconf_name=zeroconf)


def register(app: typer.Typer) -> None:
    app.command()(wyoming)
