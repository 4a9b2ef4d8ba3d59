"""CSM checkpoints laid out exactly like the real ``sesame/csm-1b`` download (issue 13, items 1-2).

The real repo holds both formats: transformers shards named by config.json's ``transformers_weights``
(Mimi bundled) and the original Sesame ``model.safetensors`` / ``ckpt.pt`` (no codec). Tiny random
models are saved in each combination; greedy codes must equal transformers' on the same weights.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path

import pytest
import torch

from echoforge.csm import CSMGenerator
from echoforge.csm.loader import CheckpointError, inspect_checkpoint, load_checkpoint

from .test_exactness import hf_generate_codes, our_greedy_codes
from .tiny_models import HF_INDEX, HF_SHARDS, save_real_layout

N = 5  # frames generated per equality check


def _link_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of ``src`` made of hard links (cheap), without the files in ``skip``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in skip:
            os.link(f, dst / f.name)
    return dst


@pytest.fixture(scope="session")
def real_repos(hf_csm, tmp_path_factory) -> dict[str, Path]:
    """The layouts a user really ends up with, all from ``hf_csm``'s weights (built once)."""
    root = tmp_path_factory.mktemp("real-layouts")
    both = save_real_layout(hf_csm, root / "both")
    hf_csm.codec_model.save_pretrained(root / "mimi")  # what kyutai/mimi would be, for the original layout
    return {
        "both": both,
        "transformers": _link_copy(both, root / "transformers", ("model.safetensors", "ckpt.pt")),
        "safetensors": _link_copy(both, root / "safetensors", (HF_INDEX, *HF_SHARDS, "ckpt.pt")),
        "ckpt": _link_copy(both, root / "ckpt", (HF_INDEX, *HF_SHARDS, "model.safetensors")),
        "mimi": root / "mimi",
    }


@pytest.fixture(scope="session")
def reference_codes(tiny_generator, hf_csm, prompt_audio) -> torch.Tensor:
    return hf_generate_codes(tiny_generator, hf_csm, prompt_audio, N)


def test_real_repo_files_are_laid_out_like_sesame_csm_1b(real_repos):
    d = real_repos["both"]
    names = {p.name for p in d.iterdir()}
    assert {"config.json", HF_INDEX, *HF_SHARDS, "model.safetensors", "ckpt.pt", "tokenizer.json"} <= names
    assert {
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "generation_config.json",
    } <= names
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "csm" and cfg["transformers_weights"] == HF_INDEX
    assert set(json.loads((d / HF_INDEX).read_text())["weight_map"].values()) == set(HF_SHARDS)


def test_both_formats_prefers_transformers_weights_and_reads_every_shard(real_repos, prompt_audio, reference_codes):
    from transformers import CsmForConditionalGeneration

    d = real_repos["both"]
    plan = inspect_checkpoint(d)
    assert plan.layout == "transformers"
    assert plan.weights.files == [d / s for s in HF_SHARDS] and plan.weights.index == d / HF_INDEX
    assert {i.file.name for i in plan.tensors.values()} == set(HF_SHARDS)  # tensors really come from both
    assert plan.codec_bundled and plan.unused == ["model.safetensors", "ckpt.pt"]
    assert plan.describe() == f"transformers layout: {HF_INDEX} (2 shards), Mimi bundled"

    gen = CSMGenerator.from_pretrained(d, device="cpu")
    assert gen.ckpt.layout == "transformers" and gen.ckpt.plan.weights.label.startswith(HF_INDEX)
    ours = our_greedy_codes(gen, prompt_audio, N)
    # transformers itself honours transformers_weights in the same directory.
    hf = CsmForConditionalGeneration.from_pretrained(d).eval()
    assert torch.equal(ours, hf_generate_codes(gen, hf, prompt_audio, N))
    assert torch.equal(ours, reference_codes)


def test_transformers_shards_only(real_repos, prompt_audio, reference_codes):
    gen = CSMGenerator.from_pretrained(real_repos["transformers"], device="cpu")
    assert gen.ckpt.layout == "transformers" and gen.ckpt.plan.unused == []
    assert torch.equal(our_greedy_codes(gen, prompt_audio, N), reference_codes)


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_original_layout_only_with_separate_mimi(real_repos, kind, prompt_audio, reference_codes):
    d, mimi = real_repos[kind], real_repos["mimi"]
    plan = inspect_checkpoint(d, codec=mimi)
    name = "model.safetensors" if kind == "safetensors" else "ckpt.pt"
    assert plan.layout == "sesame" and plan.weights.files == [d / name] and not plan.codec_bundled
    assert plan.describe() == f"original layout: {name}, Mimi from {mimi}"
    assert inspect_checkpoint(d).describe() == f"original layout: {name}, Mimi from kyutai/mimi"
    gen = CSMGenerator.from_pretrained(d, device="cpu", codec=mimi)
    assert gen.ckpt.layout == "sesame" and gen.ckpt.codec_state is None
    assert torch.equal(our_greedy_codes(gen, prompt_audio, N), reference_codes)


@pytest.mark.parametrize("base", ["transformers", "both"])
def test_missing_shard_is_a_clear_error(real_repos, tmp_path, base):
    d = _link_copy(real_repos[base], tmp_path / "partial", (HF_SHARDS[1],))
    with pytest.raises(CheckpointError, match=HF_SHARDS[1]) as err:
        inspect_checkpoint(d)
    assert "\n" not in str(err.value) and "incomplete" in str(err.value)
    with pytest.raises(CheckpointError, match=HF_SHARDS[1]):
        load_checkpoint(d)


def test_mismatched_config_and_layer_count_are_caught_from_headers(real_repos, tmp_path):
    d = _link_copy(real_repos["safetensors"], tmp_path / "fewer-layers", ("config.json",))
    cfg = json.loads((real_repos["safetensors"] / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="2 backbone layers but config.json says 1"):
        inspect_checkpoint(d)


def test_tokenizer_is_checked_before_weights_are_read(real_repos, tmp_path, monkeypatch):
    import echoforge.csm.loader as loader

    d = _link_copy(real_repos["both"], tmp_path / "notok", ("tokenizer.json",))
    monkeypatch.setattr(loader, "read_headers", lambda *a: pytest.fail("weights read before the tokenizer check"))
    with pytest.raises(CheckpointError, match="tokenizer.json not found"):
        load_checkpoint(d)


# ----------------------------------------------------------------------------- the hub: one weight set


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """``huggingface_hub`` downloads served from a local repo directory; records what was asked for."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: dict[str, list] = {"files": [], "patterns": []}
    state: dict[str, Path] = {}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def hf_hub_download(repo_id, filename, **kw):
        calls["files"].append(filename)
        return str(state["repo"] / filename)

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        calls["patterns"].append(list(allow_patterns))
        out = tmp_path / f"snapshot{len(calls['patterns'])}"
        out.mkdir()
        for f in state["repo"].iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                os.link(f, out / f.name)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state, calls


def test_hub_download_fetches_only_the_transformers_weights(fake_hub, real_repos):
    from echoforge.csm.hub import resolve

    state, calls = fake_hub
    state["repo"] = real_repos["both"]
    d = resolve("sesame/csm-1b")
    assert calls["files"][0] == "config.json"  # read alone, first
    got = {p.name for p in d.iterdir()}
    assert {HF_INDEX, *HF_SHARDS, "config.json", "tokenizer.json"} <= got
    assert not {"model.safetensors", "ckpt.pt"} & got  # one weight set (~6 GB), not both (~13 GB)
    assert len(calls["patterns"]) == 1
    assert inspect_checkpoint(d).describe() == f"transformers layout: {HF_INDEX} (2 shards), Mimi bundled"


def test_hub_download_of_original_only_repo_fetches_model_safetensors(fake_hub, real_repos, tmp_path):
    from echoforge.csm.hub import resolve

    state, calls = fake_hub
    repo = _link_copy(real_repos["both"], tmp_path / "orig-repo", (HF_INDEX, *HF_SHARDS, "config.json"))
    cfg = json.loads((real_repos["both"] / "config.json").read_text())
    del cfg["transformers_weights"]
    (repo / "config.json").write_text(json.dumps(cfg))
    state["repo"] = repo
    got = {p.name for p in resolve("owner/csm-original").iterdir()}
    assert "model.safetensors" in got and "ckpt.pt" not in got


# ----------------------------------------------------------------------------- diagnostics


def _cli(monkeypatch, tmp_path, args: list[str], **env: str) -> str:
    from typer.testing import CliRunner

    from echoforge.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return " ".join(re.sub("[\u2500-\u257f]", " ", result.output).split())  # table borders dropped


def test_doctor_says_which_layout_and_files(real_repos, tmp_path, monkeypatch):
    out = _cli(monkeypatch, tmp_path, ["doctor"], ECHOFORGE_CSM__MODEL=str(real_repos["both"]))
    assert f"transformers layout: {HF_INDEX} (2 shards), Mimi bundled" in out
    assert "loadable" in out and "model.safetensors, ckpt.pt" in out  # present, not read

    out = _cli(monkeypatch, tmp_path, ["doctor"], ECHOFORGE_CSM__MODEL=str(real_repos["ckpt"]),
               ECHOFORGE_CSM__CODEC=str(real_repos["mimi"]))  # fmt: skip
    assert f"original layout: ckpt.pt, Mimi from {real_repos['mimi']}" in out


def test_doctor_reports_weights_that_would_not_load(real_repos, tmp_path, monkeypatch):
    d = _link_copy(real_repos["both"], tmp_path / "partial", (HF_SHARDS[0],))
    out = _cli(monkeypatch, tmp_path, ["doctor"], ECHOFORGE_CSM__MODEL=str(d))
    assert "will not load" in out and "would NOT load" in out and HF_SHARDS[0] in out

    out = _cli(monkeypatch, tmp_path, ["doctor"], ECHOFORGE_CSM__MODEL="sesame/csm-1b",
               HF_HUB_CACHE=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")  # fmt: skip
    assert "not found" in out and "HF_HUB_OFFLINE" in out and "gated" in out and "huggingface-cli login" in out


def test_engines_lists_csm_without_loading_weights(real_repos, tmp_path, monkeypatch):
    import echoforge.csm.generator as generator
    import echoforge.csm.loader as loader

    def boom(*a, **k):
        raise AssertionError("engines must not load the model")

    monkeypatch.setattr(loader, "load_checkpoint", boom)
    monkeypatch.setattr(generator, "load_checkpoint", boom)
    monkeypatch.setattr(generator.CSMGenerator, "from_pretrained", boom)
    out = _cli(monkeypatch, tmp_path, ["engines"], ECHOFORGE_CSM__MODEL=str(real_repos["both"]),
               ECHOFORGE_DEVICE="cpu")  # fmt: skip
    assert "csm ready CSM 24000 loadable" in out and "Mimi bundled" in out
    assert "auto picks csm" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_device_cuda_on_cpu_torch_is_one_clear_line_and_auto_falls_back(real_repos, caplog):
    from echoforge.config import load_settings
    from echoforge.csm.engine import CSMEngine
    from echoforge.engines import EngineUnavailable, create_engine

    settings = load_settings(engine="csm", device="cuda", csm={"model": str(real_repos["both"])})
    with pytest.raises(EngineUnavailable) as err:
        CSMEngine.from_settings(settings)
    msg = str(err.value)
    assert "\n" not in msg and "CUDA" in msg and "download.pytorch.org/whl/cu" in msg
    if torch.version.cuda is None:
        assert "CPU-only" in msg

    caplog.set_level("WARNING")
    try:
        engine = create_engine(load_settings(engine="auto", device="cuda", csm={"model": str(real_repos["both"])}))
    except EngineUnavailable as exc:  # no fallback engine installed here: the reason is still named
        assert "csm: device 'cuda'" in str(exc)
        return
    assert engine.is_fallback
    assert "FALLBACK" in caplog.text and "device 'cuda'" in caplog.text


def test_offline_message_names_hf_hub_offline_and_the_gate(monkeypatch, tmp_path):
    from echoforge.config import load_settings
    from echoforge.csm.engine import CSMEngine
    from echoforge.engines import EngineUnavailable

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineUnavailable) as err:
        CSMEngine.from_settings(load_settings(engine="csm", csm={"model": "sesame/csm-1b"}))
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "gated" in msg and "huggingface-cli login" in msg and "licence" in msg
    assert "\n" not in msg


def test_loading_streams_tensors_into_a_meta_model(real_repos, monkeypatch):
    """No whole-file read (``safetensors.torch.load_file``) and every parameter materialised."""
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("whole file loaded"))
    ck = load_checkpoint(real_repos["both"])
    assert not any(p.is_meta for p in ck.model.parameters())
    assert all(p.requires_grad for p in ck.model.parameters())  # training loads through here too
    assert ck.codec_state and ck.codec_config


def test_fine_tune_export_from_the_real_layout_loads(real_repos, tmp_path):
    """Training exports carry the bundled Mimi over from the shards and drop ``transformers_weights``."""
    from echoforge.train.modeling import export_checkpoint

    ck = load_checkpoint(real_repos["both"])
    out = export_checkpoint(ck.model.state_dict(), ck.model.args, tmp_path / "tuned", real_repos["both"])
    assert "transformers_weights" not in json.loads((out / "config.json").read_text())
    assert not (out / HF_INDEX).exists()
    plan = inspect_checkpoint(out)
    assert plan.describe() == "transformers layout: model.safetensors, Mimi bundled"
    assert torch.equal(load_checkpoint(out).model.audio_head, ck.model.audio_head)
