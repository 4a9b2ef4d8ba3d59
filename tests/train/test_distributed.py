"""torchrun --nproc_per_node 2 (gloo, CPU): DDP and FSDP2 give the single-process loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from _servers import free_port
from train_helpers import tiny_config

from echoforge.train.configs import TrainConfig
from echoforge.train.trainer import train

pytestmark = pytest.mark.integration

TORCHRUN = Path(sys.executable).parent / "torchrun"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to python")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(mode, tmp_path, tiny_model_dir, synthetic_data):
    base = tiny_config(
        tmp_path, tiny_model_dir, synthetic_data, optim__max_steps=2, optim__batch_size=4, eval_batches=1
    )
    single = train(TrainConfig.model_validate(dict(base, out_dir=str(tmp_path / "single"))), progress=False)
    # Same global batch (4): two ranks x 2 sequences.
    cfg = dict(base, out_dir=str(tmp_path / mode), distributed=mode)
    cfg["optim"] = dict(base["optim"], batch_size=2)
    path = tmp_path / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "echoforge.train.trainer", str(path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = [json.loads(line) for line in (tmp_path / mode / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2
    # Step 1 checks the sharded forward; step 2 checks that gradients were reduced correctly.
    np.testing.assert_allclose(losses, [h["loss"] for h in single["history"]], rtol=1e-5)
    assert (tmp_path / mode / "final" / "model.safetensors").is_file()
