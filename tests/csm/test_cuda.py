"""CUDA checks of the CSM engine on tiny random models (skipped without a GPU).

Run by ``benchmarks/device_check.sh`` on the device machine; here (CPU) they skip, unless
``ECHOFORGE_TEST_DEVICE=cpu`` runs the same checks on the CPU (the device check's dry run does:
there "compiled" is the eager path, so it checks the test logic, not CUDA graphs).

* the compiled (CUDA-graphed) frame step gives the same greedy codes as eager, in exact fp32,
  and both equal the CPU fp32 engine (hence transformers, see test_exactness.py);
* bf16 stays close to fp32 under teacher forcing (codebook agreement above a floor);
* ``dtype="exact"`` switches TF32 off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

DEVICE = os.environ.get("ECHOFORGE_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXT = "hello world how are you today"
FRAMES = 12
# bf16 vs fp32 on the tiny model (teacher-forced, 48 frames); CPU measured 0.98 / 0.96.
BF16_C0_FLOOR, BF16_DEPTH_FLOOR = 0.85, 0.85


@pytest.fixture(scope="module")
def exact_eager(tiny_csm_dir):
    from echoforge.csm import CSMGenerator

    return CSMGenerator.from_pretrained(tiny_csm_dir, device=DEVICE, dtype="exact", compile=False, max_batch_size=2)


def test_exact_turns_tf32_off(exact_eager):
    assert exact_eager.dtype == torch.float32
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"


def test_cuda_exact_equals_cpu_fp32(exact_eager, tiny_generator):
    cpu = tiny_generator.generate_codes(TEXT, max_audio_length_ms=FRAMES * 80, temperature=0)
    cuda = exact_eager.generate_codes(TEXT, max_audio_length_ms=FRAMES * 80, temperature=0)
    assert torch.equal(cuda.cpu(), cpu.cpu())


def test_compiled_equals_eager_fp32(tiny_csm_dir, exact_eager):
    from echoforge.csm import CSMGenerator

    compiled = CSMGenerator.from_pretrained(tiny_csm_dir, device=DEVICE, dtype="exact", compile=True, max_batch_size=2)
    eager = exact_eager.generate_codes(TEXT, max_audio_length_ms=FRAMES * 80, temperature=0)
    for _ in range(2):  # the second run replays the captured graph
        got = compiled.generate_codes(TEXT, max_audio_length_ms=FRAMES * 80, temperature=0)
        assert torch.equal(got.cpu(), eager.cpu())
    reqs = [dict(text=TEXT, temperature=0, max_audio_length_ms=FRAMES * 80),
            dict(text="good morning", temperature=0, max_audio_length_ms=FRAMES * 80)]  # fmt: skip
    batch_c = compiled.generate_batch(reqs, decode=False)
    batch_e = exact_eager.generate_batch(reqs, decode=False)
    for c, e in zip(batch_c, batch_e, strict=True):
        assert torch.equal(c.cpu(), e.cpu())


def test_bf16_agreement_above_floor(tiny_csm_dir, exact_eager):
    from echoforge.csm import CSMGenerator

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from precision_drift import teacher_force

    bf16 = CSMGenerator.from_pretrained(tiny_csm_dir, device=DEVICE, dtype="bfloat16", compile=False)
    codes = exact_eager.generate_codes(TEXT, max_audio_length_ms=48 * 80, temperature=0)
    tokens, mask, _ = exact_eager.build_prompt(TEXT, 0, [], 48)
    ref0, refd = teacher_force(exact_eager, tokens, mask, codes)
    got0, gotd = teacher_force(bf16, tokens, mask, codes)
    c0 = (got0.argmax(-1) == ref0.argmax(-1)).float().mean().item()
    depth = (gotd.argmax(-1) == refd.argmax(-1)).float().mean().item()
    assert (ref0.argmax(-1).cpu() == codes[:, 0]).all()  # the one-pass fp32 forward agrees with generation
    assert c0 >= BF16_C0_FLOOR, c0
    assert depth >= BF16_DEPTH_FLOOR, depth
