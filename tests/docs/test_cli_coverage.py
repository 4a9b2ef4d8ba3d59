"""Every `echoforge …` command the docs show exists in the real CLI (and the other way round)."""

from __future__ import annotations

import re

import typer

from .conftest import DOCS


def _cli_tree() -> dict[str, set[str]]:
    from echoforge.cli import app

    group = typer.main.get_command(app)
    tree: dict[str, set[str]] = {}
    for name, cmd in group.commands.items():
        tree[name] = set(getattr(cmd, "commands", {}) or {})
    return tree


def _code_blocks(text: str) -> list[str]:
    """Bodies of the fenced bash/text/console blocks of a page (indented ones too)."""
    blocks, body, lang = [], None, None
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if body is None:
            if fence:
                body, lang = [], fence.group(1)
        elif fence and not fence.group(1):
            if lang in ("bash", "text", "console", ""):
                blocks.append("\n".join(body))
            body = None
        else:
            body.append(line)
    return blocks


def _documented() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in DOCS.rglob("*.md"):
        for block in _code_blocks(path.read_text(encoding="utf-8")):
            for m in re.finditer(r"(?:^|[\s/(`])echoforge ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", block, flags=re.M):
                found.setdefault(m.group(1), set()).add(m.group(2) or "")
    return found


# The CLI module of the part that provides each command. The CLI registers a part only when its
# module is in the checkout, so a command of a part that is not there yet is reported, not failed.
PART_OF = {
    "analyze": "echoforge.cli.analysis",
    "watermark": "echoforge.cli.watermark",
    "converse": "echoforge.cli.csm",
    "agent": "echoforge.cli.agent",
    "kb": "echoforge.cli.agent",
    "train": "echoforge.cli.train",
    "data": "echoforge.cli.train",
    "eval": "echoforge.cli.eval",
}


def test_documented_commands_exist():
    import importlib.util
    import warnings

    tree = _cli_tree()
    missing, absent_parts = [], []
    for command, subs in _documented().items():
        if command not in tree:
            part = PART_OF.get(command)
            if part and importlib.util.find_spec(part) is None:
                absent_parts.append(f"{command} ({part})")
            else:
                missing.append(command)
            continue
        if tree[command]:  # a group: its documented sub-commands must exist too
            missing += [f"{command} {s}" for s in subs if s and s not in tree[command]]
    assert not missing, f"the docs show commands the CLI does not have: {sorted(missing)}"
    if absent_parts:
        warnings.warn(f"documented commands of parts not in this checkout: {', '.join(sorted(absent_parts))}", stacklevel=1)


def test_every_command_is_documented():
    documented = _documented()
    undocumented = sorted(name for name in _cli_tree() if name not in documented)
    assert not undocumented, f"CLI commands missing from the docs: {undocumented}"
