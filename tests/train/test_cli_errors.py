"""`echoforge train`, `data prepare` and `eval` without the gated weights: one line saying what to do."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from echoforge.cli import app


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: no weights here
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_without_weights_is_one_line(offline):
    res = CliRunner().invoke(app, ["train", "finetune-lora"])
    assert res.exit_code == 1
    line = _one_error_line(res.output)
    assert "sesame/csm-1b" in line and "not on this machine" in line
    assert "model.init_from" in line and "echoforge data tiny-model" in line


def test_train_with_a_gated_hub_id_is_one_line(offline):
    res = CliRunner().invoke(app, ["train", "csm-350m", "model.init_from=meta-llama/Llama-3.2-1B"])
    assert res.exit_code in (1, 2)
    line = _one_error_line(res.output)  # the first gated repo the trainer needs is named
    assert "not on this machine" in line and "gated" in line


def test_data_prepare_without_weights_is_one_line(offline):
    rec = offline / "rec"
    rec.mkdir()
    subprocess.run(["espeak-ng", "-w", str(rec / "a.wav"), "hello there my friend"], check=True)
    res = CliRunner().invoke(app, ["data", "prepare", str(rec), str(offline / "out")])
    assert res.exit_code == 1
    line = _one_error_line(res.output)
    assert "not on this machine" in line and "--model" in line and "tiny-model" in line


def test_eval_csm_without_weights_is_one_line(offline):
    res = CliRunner().invoke(app, ["eval", "--engine", "csm", "--set", "en_quick", "--codec", "none", "--no-controls",
                                   "--out", str(offline / "ev")])  # fmt: skip
    assert res.exit_code == 1
    line = _one_error_line(res.output)
    assert "no engine could be evaluated (csm:" in line and "not on this machine" in line


def test_tiny_model_writes_a_smoke_kit(offline):
    res = CliRunner().invoke(app, ["data", "tiny-model", str(offline / "smoke")])
    assert res.exit_code == 0, res.output
    assert "SMOKE TEST ONLY" in res.output and "echoforge train" in res.output
    kit = offline / "smoke"
    assert (kit / "tiny-csm" / "model.safetensors").is_file() and (kit / "tiny-csm" / "tokenizer.json").is_file()
    assert (kit / "tiny-csm" / "SMOKE_TEST_ONLY.txt").is_file() and (kit / "smoke-train.yaml").is_file()
    assert len((kit / "speech" / "manifest.jsonl").read_text().splitlines()) == 4
    from echoforge.train.configs import load_config

    cfg = load_config(str(kit / "smoke-train.yaml"), [])
    assert cfg.optim.max_steps == 2 and cfg.model.init_from == str(kit / "tiny-csm")
