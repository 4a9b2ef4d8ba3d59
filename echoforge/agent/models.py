"""The agent's models, loaded once and shared by every conversation (CLI, server sessions, benchmark).

:class:`AgentModels` holds the recogniser, the LLM, the knowledge base and the optional emotion
detector; :meth:`AgentModels.warm_up` runs each once so the first real turn is not paying for lazy
initialisation; :meth:`AgentModels.memory_report` says what each one takes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from echoforge.agent.config import AgentSettings
from echoforge.agent.vad import SileroVAD, TurnDetector

log = logging.getLogger("echoforge.agent")


def analysis_emotion_detector(policy: str = "mirror") -> Callable[[np.ndarray, int], dict | None]:
    """``(audio, sr) -> {"label", "confidence", "reply_style"}`` from :mod:`echoforge.analysis`.

    ``reply_style`` is the emotion the reply should take under ``policy`` (mirror, calm_down,
    lift_up). Returns ``None`` for audio that is not speech.
    """
    from echoforge.analysis import choose_reply_emotion, classify_emotion

    choose_reply_emotion("neutral", policy)  # fail at start-up, not mid-turn, on a bad policy

    def detect(audio: np.ndarray, sample_rate: int) -> dict | None:
        data = classify_emotion(audio, sample_rate)
        if not data["confidence"]:
            return None
        return {"label": data["label"], "confidence": data["confidence"], "reply_style": choose_reply_emotion(data["label"], policy)}

    return detect


def _as_dict(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    if isinstance(value, str):
        return {"label": value}
    return {}


@dataclass
class AgentModels:
    """Shared, thread-safe models. Build with :meth:`load`."""

    settings: AgentSettings
    stt: Any
    llm: Any
    kb: Any = None
    emotion_detector: Callable[[np.ndarray, int], dict | None] | None = None
    vad_model_path: Path | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    kb_chunks: int | None = None  # chunks indexed at load (0: an empty knowledge base; None: none loaded)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, settings: AgentSettings, data_dir: Path, *, with_kb: bool = True) -> AgentModels:
        """Load STT, LLM and the knowledge base (built/updated incrementally) for ``settings``."""
        from echoforge.agent.llm import create_llm
        from echoforge.agent.rag import KnowledgeBase
        from echoforge.agent.stt import WhisperSTT

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        times: dict[str, float] = {}
        t = time.perf_counter()
        stt = WhisperSTT.from_settings(settings)
        times["stt"] = time.perf_counter() - t
        t = time.perf_counter()
        llm = create_llm(settings)
        times["llm"] = time.perf_counter() - t
        kb = None
        kb_chunks = None
        if with_kb:
            t = time.perf_counter()
            kb = KnowledgeBase.from_settings(settings, data_dir)
            report = kb.build()
            times["kb"] = time.perf_counter() - t
            kb_chunks = report.total_chunks
            if kb_chunks:
                log.info("knowledge base: %d chunks (%s)", report.total_chunks, report.as_dict())
            else:  # the agent can only say "I don't know" to questions of fact: say why, loudly
                log.warning("knowledge base %s is empty: 0 chunks indexed; the agent cannot answer from notes", kb.kb_dir)
        glossary = [*settings.stt_glossary, *(kb.glossary() if kb is not None and settings.stt_glossary_from_notes else [])]
        stt.set_glossary(glossary)
        emotion = analysis_emotion_detector(settings.reply_policy) if settings.use_analysis else None
        models = cls(settings, stt, llm, kb, emotion, load_seconds=times, kb_chunks=kb_chunks)
        if settings.report_memory:
            log.info("agent memory: %s", models.memory_report())
        return models

    def new_detector(self) -> TurnDetector:
        """A fresh VAD state machine for one conversation (each needs its own recurrent state)."""
        from echoforge.agent.pipeline import vad_params

        return TurnDetector(vad_params(self.settings), SileroVAD(self.vad_model_path))

    def warm_up(self) -> dict[str, float]:
        """Run each model once (blocking; call in a thread). Returns seconds per model."""
        import threading as _t

        times = {}
        t = time.perf_counter()
        self.stt.transcribe(np.zeros(16_000, np.float32), 16_000)
        times["stt"] = time.perf_counter() - t
        if self.kb is not None:
            t = time.perf_counter()
            self.kb.query("warm up", 1)
            self.kb.warm_sentences()
            times["kb"] = time.perf_counter() - t
        t = time.perf_counter()
        for _ in self.llm.stream([{"role": "user", "content": "Hi"}], _t.Event(), 2, 0.0):
            pass
        times["llm"] = time.perf_counter() - t
        return times

    def knowledge_base_info(self) -> dict[str, Any]:
        """The knowledge base for UIs: its folder and how many chunks are indexed (0: empty)."""
        kb = self.kb
        return {"folder": str(kb.kb_dir) if kb is not None else None, "chunks": self.kb_chunks,
                "empty": kb is not None and not self.kb_chunks}  # fmt: skip

    def memory_report(self, engine: Any = None) -> dict[str, Any]:
        """What each model takes: weights (MB), process RSS, and CUDA memory when on a GPU."""
        mb = 1024 * 1024
        report: dict[str, Any] = {
            "stt_weights_mb": round(_safe(getattr(self.stt, "memory_bytes", None)) / mb, 1),
            "stt_device": getattr(self.stt, "device", "cpu"),
            "llm_weights_mb": round(_safe(getattr(self.llm, "memory_bytes", None)) / mb, 1),
            "llm_device": getattr(self.llm, "device", "remote"),
        }
        if self.kb is not None:
            model = getattr(self.kb.embedder, "_model", None)
            params = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
            report["embedder_weights_mb"] = round(params / mb, 1)
        if engine is not None:
            report["tts_engine"] = engine.name
            report["tts_device"] = getattr(engine, "device", "cpu")
        try:
            import psutil

            report["process_rss_mb"] = round(psutil.Process().memory_info().rss / mb, 1)
        except ImportError:
            pass
        try:
            import torch

            if torch.cuda.is_available():
                report["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / mb, 1)
                report["cuda_reserved_mb"] = round(torch.cuda.memory_reserved() / mb, 1)
        except ImportError:
            pass
        return report


def _safe(fn: Callable[[], int] | None) -> int:
    try:
        return int(fn()) if fn else 0
    except Exception:
        return 0


def agent_status(settings: AgentSettings, data_dir: Path, models: AgentModels | None = None) -> dict[str, Any]:
    """What the agent will run on, without loading it (``/api/health``, the agent page).

    ``knowledge_base.documents`` counts the files in the folder; ``chunks`` is known once the
    agent's models are loaded (``None`` before). ``llm.backend`` is ``"endpoint"``, ``"llama.cpp"``
    or ``"transformers"`` — the last one while llama-cpp-python is missing (``make serve`` builds
    it in the background on a first run: ``building``).
    """
    import importlib.util
    import sys

    from echoforge.agent.rag_documents import SUFFIXES

    folder = Path(settings.knowledge_base) if settings.knowledge_base is not None else Path(data_dir) / "knowledge_base"
    documents = sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES) if folder.is_dir() else 0
    if folder.is_dir() or settings.knowledge_base is not None:
        seeded = documents
    else:  # the default folder is created on first use with the shipped notes
        from echoforge.agent.config import shipped_notes

        notes = shipped_notes()
        seeded = sum(1 for p in notes.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES) if notes else 0
    chunks = models.kb_chunks if models is not None else None
    if settings.llm_base_url:
        backend, building = "endpoint", False
    elif settings.llm_device != "cuda" and importlib.util.find_spec("llama_cpp") is not None:
        backend, building = "llama.cpp", False
    else:
        backend = "transformers"
        prefix = Path(sys.prefix)
        building = (prefix / "llama-cpp-build.log").exists() and not (prefix / ".llama-cpp-installed").exists()
    return {
        "knowledge_base": {"folder": str(folder), "documents": seeded, "chunks": chunks, "empty": seeded == 0 or chunks == 0},
        "llm": {"backend": backend, "building": building},
    }
