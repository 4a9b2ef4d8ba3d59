"""Fixtures for the training tests: one thread per process, a tiny model, synthetic data."""

from __future__ import annotations

import pytest
import torch
from train_helpers import synthetic_conversations, tiny_train_model

from echoforge.train.data import write_synthetic


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The CI box has 2 cores shared with other jobs: oversubscribed intra-op threads make tiny
    # models ~50x slower, one thread is fastest.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return tiny_train_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """4 conversations x 3 turns x 10 frames; the last conversation is the validation split."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), synthetic_conversations(4, 3, 10), val=1)
