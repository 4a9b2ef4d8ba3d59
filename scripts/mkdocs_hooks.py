"""MkDocs hooks: generate the reference pages from the code on every build.

``reference/configuration.md`` (from :class:`echoforge.config.Settings`) and
``reference/api.md`` (from the server's OpenAPI schema) are produced by the functions in
``scripts/gen_docs.py``; a copy already on disk (written by ``make docs``) is replaced by the
fresh one, so no build can show a stale reference.

``websocket.md`` is written by hand next to the server's WebSocket route; should it be missing,
a page is made from the route module's docstring so links to it never break the build.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

_HERE = Path(__file__).resolve().parent


def _gen_docs():
    spec = importlib.util.spec_from_file_location("echoforge_gen_docs", _HERE / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config) -> Files:
    gen = _gen_docs()
    for name, make in gen.PAGES.items():
        src_uri = f"reference/{name}"
        try:
            content = make()
        except SystemExit as exc:  # gen_docs' clear "cannot import the server" error
            raise PluginError(str(exc)) from None
        existing = files.get_file_from_path(src_uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, src_uri, content=content))
    if files.get_file_from_path("websocket.md") is None:
        files.append(File.generated(config, "websocket.md", content=_websocket_fallback()))
    return files


def _websocket_fallback() -> str:
    try:
        import echoforge.server.routers.stream as stream

        doc = (stream.__doc__ or "").strip()
    except Exception as exc:  # pragma: no cover - the server part is missing
        raise PluginError(f"docs/websocket.md is missing and echoforge.server.routers.stream cannot be imported: {exc}") from None
    lines = doc.splitlines()
    title = lines[0].replace("``", "`") if lines else "WS /api/stream"
    body = "\n".join(lines[1:]).replace("``", "`").replace("(see docs/websocket.md)", "")
    return f"# WebSocket streaming\n\n{title}\n\n{body.strip()}\n\nThe messages and their fields are defined in `echoforge/server/routers/stream.py`.\n"
