"""Fixtures for the training tests: a tiny model, synthetic data."""

from __future__ import annotations

import pytest
from train_helpers import synthetic_conversations, tiny_train_model, write_synthetic


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return tiny_train_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """4 conversations x 3 turns x 10 frames; the last conversation is the validation split."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), synthetic_conversations(4, 3, 10), val=1)
