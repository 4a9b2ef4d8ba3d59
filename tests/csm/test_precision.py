"""Precision modes: ``dtype: exact`` (fp32 weights + exact math) and the drift benchmark's measures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from echoforge.config import ConfigError, load_settings
from echoforge.csm.generator import pick_dtype, use_exact_math

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_math_flags():
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def test_settings_accept_exact_and_reject_unknown():
    assert load_settings(dtype="exact").dtype == "exact"
    with pytest.raises(ConfigError, match="dtype"):
        load_settings(dtype="fp8")


def test_pick_dtype(restore_math_flags):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype(cuda, None) == torch.bfloat16 and pick_dtype(cpu, "auto") == torch.float32
    assert pick_dtype(cpu, "float16") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype(cpu, "fp8")
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    assert pick_dtype(cuda, "exact") == torch.float32
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    use_exact_math()  # idempotent


def test_exact_generator_matches_float32(tiny_csm_dir, tiny_generator, restore_math_flags):
    from echoforge.csm import CSMGenerator

    exact = CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", dtype="exact")
    assert exact.dtype == torch.float32
    want = tiny_generator.generate_codes("hello world", max_audio_length_ms=6 * 80, temperature=0)
    assert torch.equal(exact.generate_codes("hello world", max_audio_length_ms=6 * 80, temperature=0), want)


def test_teacher_forcing_reproduces_greedy_generation(tiny_generator):
    """The drift benchmark's one-pass forward picks exactly what incremental greedy generation picked."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from precision_drift import first_divergence, teacher_force

    text = "hello world how are you"
    codes = tiny_generator.generate_codes(text, max_audio_length_ms=10 * 80, temperature=0)
    tokens, mask, _ = tiny_generator.build_prompt(text, 0, [], 10)
    batch = tiny_generator.model.max_batch_size
    l0, ld = teacher_force(tiny_generator, tokens, mask, codes, chunk=4)
    assert tiny_generator.model.max_batch_size == batch  # caches restored
    assert l0.shape == (codes.shape[0], 2051) and ld.shape == (codes.shape[0], 31, 2051)
    assert torch.equal(l0.argmax(-1), codes[:, 0])
    assert torch.equal(ld.argmax(-1), codes[:, 1:])
    assert first_divergence(codes, codes) is None
    other = codes.clone()
    other[3, 5] += 1
    assert first_divergence(codes, other) == 3
    assert first_divergence(codes, codes[:7]) == 7
