"""The agent's knowledge base defaults to a folder in the data dir, seeded with the shipped notes,
so a server started from any working directory answers from them; an empty one is said."""

from __future__ import annotations

from pathlib import Path

from echoforge.agent.config import AgentSettings, shipped_notes
from echoforge.agent.models import AgentModels
from echoforge.agent.testing import fake_knowledge_base

ROOT = Path(__file__).resolve().parents[2]


def test_default_folder_is_in_the_data_dir_and_seeded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the source tree: the old default (./knowledge_base) was empty here
    folder = AgentSettings().resolved_kb_dir(tmp_path / "data")
    assert folder == tmp_path / "data" / "knowledge_base"
    shipped = sorted(p.name for p in (ROOT / "knowledge_base").glob("*.md"))
    assert shipped and sorted(p.name for p in folder.glob("*.md")) == shipped
    assert shipped_notes() == ROOT / "knowledge_base"
    # Seeded once: the user's edits and deletions stay.
    (folder / "voices.md").unlink()
    assert not (AgentSettings().resolved_kb_dir(tmp_path / "data") / "voices.md").exists()


def test_an_explicit_folder_is_used_as_given(tmp_path):
    assert AgentSettings(knowledge_base=tmp_path / "mine").resolved_kb_dir(tmp_path / "data") == tmp_path / "mine"
    assert not (tmp_path / "data" / "knowledge_base").exists()


def test_an_empty_knowledge_base_is_reported(tmp_path):
    kb = fake_knowledge_base(tmp_path / "kb", tmp_path / "index", {})
    models = AgentModels(AgentSettings(), stt=None, llm=None, kb=kb, kb_chunks=kb.build().total_chunks)
    assert models.knowledge_base_info() == {"folder": str(tmp_path / "kb"), "chunks": 0, "empty": True}
    full = fake_knowledge_base(tmp_path / "kb2", tmp_path / "index2", {"a.md": "# A\n\nThe ferry leaves at nine."})
    info = AgentModels(AgentSettings(), stt=None, llm=None, kb=full, kb_chunks=full.build().total_chunks).knowledge_base_info()
    assert info["chunks"] >= 1 and not info["empty"]
