"""Generate the reference pages of the docs site from the code itself.

- ``docs/reference/configuration.md`` from :class:`echoforge.config.Settings` (every field:
  YAML key, ``ECHOFORGE_…`` environment variable, type, default, constraints, description),
  plus the part-owned sections (``agent``, ``analysis``) when their models are importable;
- ``docs/reference/api.md`` from the OpenAPI schema of :func:`echoforge.server.app.create_app`.

Run by ``make docs`` before ``mkdocs build --strict``; ``scripts/mkdocs_hooks.py`` calls the
same functions on every build, so ``mkdocs serve`` is never stale either.

Usage::

    python scripts/gen_docs.py              # write both pages into docs/reference/
    python scripts/gen_docs.py --out DIR    # write them somewhere else
    python scripts/gen_docs.py --check      # exit 1 if the files on disk are out of date
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel, SecretStr  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

ENV_PREFIX = "ECHOFORGE_"
NESTED = "__"

# Sections of Settings that are free dicts at the root and validated by the part that owns them.
PART_SECTIONS: dict[str, tuple[str, str]] = {
    "agent": ("echoforge.agent.config:AgentSettings", "Live voice agent (`echoforge agent`, the agent page)."),
    "analysis": ("echoforge.analysis.config:AnalysisSettings", "Voice analysis, emotion → generation mapping, voice memory."),
}

# Descriptions for fields that have none in the model yet (the model's own description wins).
FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "device": "Where models run: `auto` picks CUDA, then Apple MPS, then CPU.",
    "dtype": "Model precision: `auto` is bfloat16 on CUDA and float32 elsewhere.",
    "log_level": "Minimum level of EchoForge's log lines.",
    "log_format": "`console`: human-readable lines; `json`: one JSON object per line (with `request_id`).",
    "csm": "The CSM-1B engine.",
    "piper": "The Piper fallback engine.",
    "generation": "Default generation parameters (a request's own values win).",
    "server": "The HTTP server, API keys, limits and the task queue.",
    "analysis": "Voice analysis and emotion settings (validated by `echoforge.analysis`).",
    "agent": "Live voice agent settings (validated by `echoforge.agent`).",
    "generation.temperature": "Sampling temperature; 0 means greedy (deterministic).",
    "generation.topk": "Sample only among the k most likely audio tokens.",
    "generation.max_audio_length_ms": "Upper bound on the length of one generated utterance.",
    "generation.speed": "Speaking-rate multiplier (0.25–4.0).",
    "server.host": "Bind address. Keep `127.0.0.1` unless a reverse proxy or container needs `0.0.0.0`.",
    "server.port": "TCP port of the server.",
    "server.cors_origins": "Origins allowed to call the API from a browser (CORS); empty: same origin only.",
    "server.max_text_chars": "Longest text accepted in one request.",
    "server.max_upload_mb": "Largest request body / audio upload.",
    "server.max_upload_seconds": "Longest reference clip accepted for a voice.",
    "server.queue_backend": "`sqlite`: embedded, persistent, one process; `redis`: shared by `echoforge worker` processes.",
    "server.redis_url": "Redis connection URL (with `queue_backend: redis`).",
    "server.queue_max_pending": "Queued tasks beyond which new ones get `429` with `Retry-After`.",
    "server.task_retries": "Retries of a task after a transient failure.",
    "server.result_ttl_hours": "Finished task audio older than this is deleted.",
    "server.result_max_mb": "Total size of kept task audio; the oldest results go first.",
    "server.metrics_require_key": "When API keys are configured, `/metrics` needs one too (set false for an open scrape endpoint on a private network).",
}


# ------------------------------------------------------------------------------ configuration
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        name = " \\| ".join(parts)
        return name + (" \\| null" if type(None) in args else "")
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_name(a) for a in args)}]" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is SecretStr:
        return "secret string"
    if isinstance(tp, type):
        if issubclass(tp, BaseModel):
            return "section"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return "(section)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "`***`"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and len(value) > 60:
        return "(long text, see the model)"
    return "`" + json.dumps(value, default=str) + "`"


def _constraints(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if text else ""


def _rows(model: type[BaseModel], yaml_prefix: str, env_prefix: str) -> tuple[list[str], list[tuple[str, type[BaseModel], str]]]:
    rows, sections = [], []
    for name, field in model.model_fields.items():
        key = f"{yaml_prefix}{name}"
        env = f"{env_prefix}{name.upper()}"
        tp = field.annotation
        setting = f"`{key}`<br>`{env}`"
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            sections.append((key, tp, env + NESTED))
            desc = _cell(field.description or FALLBACK_DESCRIPTIONS.get(key, ""))
            rows.append(f"| `{key}`<br>`{env}{NESTED}…` | section | | {desc} [→ `{key}`](#{key.replace('.', '')}) |")
            continue
        desc = field.description or FALLBACK_DESCRIPTIONS.get(key, "")
        if key in PART_SECTIONS:
            desc = (desc + f" See [`{key}`](#{key}).").strip()
        limits = _constraints(field)
        if limits:
            desc = (desc.rstrip() + f" Limits: {limits}.").strip()
        rows.append(f"| {setting} | {_type_name(tp)} | {_default(field)} | {_cell(desc)} |")
    return rows, sections


_HEADER = "| setting (YAML key, environment variable) | type | default | description |\n|---|---|---|---|"


def config_reference_md() -> str:
    """The configuration reference page, from the settings models."""
    from echoforge.config import Settings

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from echoforge.config.Settings — do not edit by hand. -->",
        "",
        "Every setting, generated from the settings model (`echoforge/config.py`). Sources, lowest to",
        "highest precedence: defaults < `echoforge.yaml` in the working directory (or the file named by",
        "`ECHOFORGE_CONFIG`) < `.env` < environment variables < command-line flags.",
        "",
        f"Environment variables are the YAML path in capitals with the prefix `{ENV_PREFIX}` and `{NESTED}`",
        "between nested keys: `server.port` is `ECHOFORGE_SERVER__PORT`. Lists and mappings take JSON",
        "(`ECHOFORGE_SERVER__API_KEYS='[\"key1\",\"key2\"]'`). An invalid value stops the program with one",
        "line naming the field.",
        "",
        "## Top level",
        "",
        _HEADER,
    ]
    rows, sections = _rows(Settings, "", ENV_PREFIX)
    out += rows

    def nested(sections: list) -> None:  # each nested block gets its own section (and anchor)
        while sections:
            key, model, env_prefix = sections.pop(0)
            out.extend(["", f"## `{key}` {{#{key.replace('.', '')}}}", ""])
            doc = (model.__doc__ or "").strip().splitlines()
            if doc and not doc[0].startswith("!!!"):
                out.extend([doc[0], ""])
            out.append(_HEADER)
            rows, more = _rows(model, key + ".", env_prefix)
            out.extend(rows)
            sections += more

    nested(sections)
    for key, (target, what) in PART_SECTIONS.items():
        out += ["", f"## `{key}` {{#{key}}}", "", what, ""]
        model = _import(target)
        if model is None:
            out.append("This section is validated by its own part, which is not installed in this build; see its guide.")
            continue
        out += [f"Validated by `{target.replace(':', '.')}`.", "", _HEADER]
        rows, more = _rows(model, key + ".", f"{ENV_PREFIX}{key.upper()}{NESTED}")
        out += rows
        nested(more)
    out += [
        "",
        "## Example",
        "",
        "```yaml",
        "# echoforge.yaml",
        "engine: auto",
        "device: auto",
        "data_dir: data",
        "log_format: json",
        "csm:",
        "  model: sesame/csm-1b",
        "server:",
        "  host: 127.0.0.1",
        "  port: 8000",
        "  queue_backend: sqlite",
        "```",
        "",
    ]
    return "\n".join(out)


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None


def all_setting_keys() -> list[str]:
    """Every dotted key of the settings tree (used by the docs tests)."""
    from echoforge.config import Settings

    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            keys.append(prefix + name)
            tp = field.annotation
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, prefix + name + ".")

    walk(Settings, "")
    for key, (target, _) in PART_SECTIONS.items():
        model = _import(target)
        if model is not None:
            walk(model, key + ".")
    return keys


# ------------------------------------------------------------------------------ API reference
def openapi_schema() -> dict[str, Any]:
    """The server's OpenAPI schema; a clear error when the server cannot be imported."""
    try:
        from echoforge.server.app import create_app
    except Exception as exc:
        raise SystemExit(f"gen_docs: cannot import echoforge.server.app ({type(exc).__name__}: {exc}); the API reference needs the server") from exc
    from echoforge.config import Settings

    # Defaults only: the reference must not depend on the environment of whoever builds it.
    settings = Settings.model_construct()
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            setattr(settings, name, field.default_factory())
    return create_app(settings).openapi()


def _ref_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#schema-{name.lower()})"
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_ref_name(schema['items'])}"
    for combo in ("anyOf", "oneOf", "allOf"):
        if combo in schema:
            return " or ".join(_ref_name(s) for s in schema[combo])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    fmt = schema.get("format")
    return (schema.get("type") or "any") + (f" ({fmt})" if fmt else "")


def _schema_limits(schema: dict[str, Any]) -> str:
    parts = []
    for key, sym in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
                     ("minLength", "min length"), ("maxLength", "max length")):
        if key in schema:
            parts.append(f"{sym} {schema[key]}")
    for sub in schema.get("anyOf", []):
        extra = _schema_limits(sub)
        if extra:
            parts.append(extra)
    return ", ".join(parts)


def _anchor(method: str, path: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in f"{method}-{path}".lower())
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-")


def api_reference_md(schema: dict[str, Any] | None = None) -> str:
    """The HTTP API reference page, from the OpenAPI schema."""
    schema = schema or openapi_schema()
    info = schema.get("info", {})
    out = [
        "# HTTP API reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from the server's OpenAPI schema — do not edit by hand. -->",
        "",
        f"{info.get('title', 'EchoForge')} {info.get('version', '')} — {info.get('description', '')}",
        "",
        "A running server also serves this schema interactively at <http://127.0.0.1:8000/docs> and as JSON",
        "at `/openapi.json`. When API keys are configured, every route except `/api/health` needs",
        "`Authorization: Bearer <key>` (or `X-API-Key: <key>`). Errors have OpenAI's shape",
        "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. The WebSocket protocol of",
        "`/api/stream` is described in [WebSocket streaming](../websocket.md).",
        "",
        "## Endpoints",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    ops = []
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method.lower() not in ("get", "post", "put", "patch", "delete"):
                continue
            ops.append((path, method.upper(), op))
    for path, method, op in ops:
        out.append(f"| {method} | [`{path}`](#{_anchor(method, path)}) | {_cell(op.get('summary', ''))} |")
    by_tag: dict[str, list] = {}
    for path, method, op in ops:
        by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((path, method, op))
    for tag, items in by_tag.items():
        out += ["", f"## {tag.capitalize()}"]
        for path, method, op in items:
            out += ["", f"### {method} `{path}` {{#{_anchor(method, path)}}}", ""]
            if op.get("summary"):
                out += [f"**{op['summary']}**", ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                for p in params:
                    ps = p.get("schema", {})
                    out.append(
                        f"| `{p['name']}` | {p.get('in', '')} | {_ref_name(ps)} | {'yes' if p.get('required') else 'no'} | "
                        f"{_cell(p.get('description') or ps.get('description') or '')} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                for ctype, content in body.get("content", {}).items():
                    out += [f"Request body (`{ctype}`): {_ref_name(content.get('schema', {}))}", ""]
            responses = op.get("responses", {})
            if responses:
                out += ["| status | description | body |", "|---|---|---|"]
                for status, resp in responses.items():
                    bodies = ", ".join(
                        f"`{ct}` {_ref_name(c.get('schema', {})) if c.get('schema') else ''}".strip()
                        for ct, c in (resp.get("content") or {}).items()
                    )
                    out.append(f"| {status} | {_cell(resp.get('description', ''))} | {bodies} |")
    components = schema.get("components", {}).get("schemas", {})
    if components:
        out += ["", "## Schemas"]
        for name, comp in sorted(components.items()):
            out += ["", f"### `{name}` {{#schema-{name.lower()}}}", ""]
            if comp.get("description"):
                out += [_cell(comp["description"].strip()), ""]
            props = comp.get("properties", {})
            if comp.get("enum"):
                out += ["One of: " + ", ".join(f"`{v}`" for v in comp["enum"]), ""]
            if props:
                required = set(comp.get("required", []))
                out += ["| field | type | required | default | limits | description |", "|---|---|---|---|---|---|"]
                for pname, prop in props.items():
                    default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
                    out.append(
                        f"| `{pname}` | {_ref_name(prop)} | {'yes' if pname in required else 'no'} | {_cell(default)} | "
                        f"{_schema_limits(prop)} | {_cell(prop.get('description', ''))} |"
                    )
    out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------ CLI
PAGES = {
    "configuration.md": config_reference_md,
    "api.md": api_reference_md,
}


def generate() -> dict[str, str]:
    return {name: fn() for name, fn in PAGES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reference", help="folder for the generated pages")
    parser.add_argument("--check", action="store_true", help="fail if the pages on disk differ from freshly generated ones")
    args = parser.parse_args(argv)
    pages = generate()
    stale = []
    for name, text in pages.items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run `python scripts/gen_docs.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
