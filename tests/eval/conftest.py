"""Eval-test fixtures: one torch thread (2 shared cores), the suite's ASR over the session Whisper."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def asr(whisper_model):
    from echoforge.eval.suite import ASR

    return ASR(whisper_model)
