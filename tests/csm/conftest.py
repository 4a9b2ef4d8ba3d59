"""Session-scoped tiny CSM fixtures (random weights, built in-process, no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .tiny_models import build_tiny_csm


@pytest.fixture(scope="session")
def tiny_csm_dir(tmp_path_factory) -> Path:
    """A saved transformers-format tiny CSM directory (config, safetensors incl. Mimi, tokenizer)."""
    return build_tiny_csm(tmp_path_factory.mktemp("csm"))


@pytest.fixture(scope="session")
def hf_csm(tiny_csm_dir):
    """transformers' reference model loaded from the same directory."""
    from transformers import CsmForConditionalGeneration

    return CsmForConditionalGeneration.from_pretrained(tiny_csm_dir).eval()


@pytest.fixture(scope="session")
def tiny_generator(tiny_csm_dir):
    from echoforge.csm import CSMGenerator

    return CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4)


@pytest.fixture(scope="session")
def prompt_audio() -> torch.Tensor:
    """0.5 s of deterministic noise-like audio at 24 kHz (a context turn)."""
    rng = np.random.default_rng(0)
    t = np.arange(12_000) / 24_000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    return torch.from_numpy(audio.astype(np.float32))
