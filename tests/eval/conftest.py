"""Eval-test fixtures: the suite's ASR over the session Whisper."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def asr(whisper_model):
    from echoforge.asr import ASR

    return ASR(whisper_model)
