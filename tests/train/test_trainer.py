"""Trainer on a tiny random CSM: overfitting, amortization, exactness vs inference, LoRA, resume, export."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import AUDIO_VOCAB, K, synthetic_conversations, tiny_config

from echoforge.train.configs import TrainConfig
from echoforge.train.dataset import ShardedDataset, build_rows, choose_decoder_rows, collate
from echoforge.train.modeling import CSMForTraining
from echoforge.train.trainer import train

CYCLE = [5, 9, 3, 12, 7, 1, 14, 10]  # codebook-0 walk of the synthetic data (see train_helpers)


def _cfg(tmp_path, model_dir, data, **over) -> TrainConfig:
    return TrainConfig.model_validate(tiny_config(tmp_path, model_dir, data, **over))


def teacher_forced_accuracy(model_dir, data, split="train") -> tuple[float, float]:
    """(codebook-0 accuracy, decoder accuracy) of a checkpoint on every frame of a split."""
    from echoforge.csm.loader import load_checkpoint

    ck = load_checkpoint(model_dir)
    tm = CSMForTraining(ck.model).eval()
    ds = ShardedDataset(data, split)
    batch = collate([build_rows(ds[i], K, 256) for i in range(len(ds))])
    rows = choose_decoder_rows(batch["c0_mask"], 1.0, [0] * len(ds))
    with torch.no_grad():
        o = tm(batch["tokens"], batch["tokens_mask"], batch["c0_mask"], rows)
    return o.c0_correct.item() / o.c0_count, o.dec_correct.item() / (o.dec_count * (K - 1))


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, tiny_model_dir, synthetic_data):
    tmp = tmp_path_factory.mktemp("overfit")
    cfg = _cfg(
        tmp, tiny_model_dir, synthetic_data, optim__max_steps=80, optim__lr=5e-3, eval_every=40, tensorboard=True
    )
    return train(cfg, progress=False), cfg


def test_loss_decreases_and_model_overfits(overfit, synthetic_data, tiny_model_dir):
    result, cfg = overfit
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 80
    assert np.mean(losses[-5:]) < 0.35 * np.mean(losses[:5]), losses[::10]
    c0_before, dec_before = teacher_forced_accuracy(tiny_model_dir, synthetic_data)
    c0_acc, dec_acc = teacher_forced_accuracy(result["checkpoint"], synthetic_data)
    chance = 1 / AUDIO_VOCAB
    assert c0_before < 0.2 and dec_before < 0.2
    assert c0_acc > 0.85 and dec_acc > 0.85, (c0_acc, dec_acc, chance)
    # Periodic validation ran and was logged; the val conversation follows the same rules.
    log = [json.loads(line) for line in open(f"{cfg.out_dir}/log.jsonl")]
    vals = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in vals] == [40, 80]
    assert vals[-1]["val_dec_acc"] > 0.5
    if importlib.util.find_spec("tensorboard") is not None:  # optional (train extra)
        assert list(Path(cfg.out_dir, "tb").glob("events.out.tfevents.*"))


def test_checkpoint_loads_in_generator_and_generates(overfit):
    from echoforge.csm import CSMGenerator, Segment

    result, _ = overfit
    gen = CSMGenerator.from_pretrained(result["checkpoint"], device="cpu")
    convs = synthetic_conversations(1, 1, 10, seed=5)
    spk, _, codes = convs[0][0]
    context = [Segment(spk, "hello world how are you", torch.from_numpy(codes).long())]
    out = gen.generate_codes("the quick brown fox", speaker=1, context=context, max_audio_length_ms=640, temperature=0)
    assert out.ndim == 2 and out.shape[1] == K and 1 <= out.shape[0] <= 8
    # The trained model continues codebook 0 along the learned cycle and derives the rest from it.
    c0 = out[:, 0].tolist()
    assert all(CYCLE[(CYCLE.index(a) + 1) % 8] == b for a, b in zip(c0, c0[1:], strict=False) if a in CYCLE), c0
    assert all(c in CYCLE for c in c0), c0
    audio = gen.decode(out)
    assert audio.ndim == 1 and audio.numel() == out.shape[0] * 1920 and torch.isfinite(audio).all()
    # transformers reads the same directory with nothing missing or left over.
    from transformers import CsmForConditionalGeneration

    _, info = CsmForConditionalGeneration.from_pretrained(result["checkpoint"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_decoder_runs_only_on_the_amortized_frames(tiny_model_dir, synthetic_data):
    from echoforge.csm.loader import load_checkpoint

    tm = CSMForTraining(load_checkpoint(tiny_model_dir).model)
    seen = []
    tm.csm.decoder.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    ds = ShardedDataset(synthetic_data)
    batch = collate([build_rows(ds[i], K, 256) for i in range(4)])
    per_row = batch["c0_mask"].sum(1).tolist()  # scored frames per sequence (text rows excluded)
    rows = choose_decoder_rows(batch["c0_mask"], 1 / 16, [11, 12, 13, 14])
    expected = sum(max(1, round(n / 16)) for n in per_row)
    out = tm(batch["tokens"], batch["tokens_mask"], batch["c0_mask"], rows)
    assert out.c0_count == sum(per_row) > 4 * expected - 4
    assert out.dec_count == rows.shape[0] == expected == tm.decoder_calls
    assert seen == [torch.Size([expected, K, tm.csm.args.decoder.dim])]  # one decoder call, chosen frames only
    assert bool(batch["c0_mask"][rows[:, 0], rows[:, 1]].all())  # chosen frames are scored audio frames
    # Text positions carry no loss: the row after a scored position is always an audio row.
    nxt = batch["tokens_mask"][:, 1:][batch["c0_mask"]]
    assert bool(nxt[:, :K].all()) and not bool(nxt[:, K].any())
    # Same seeds -> same frames (rank-independent); fraction 1 -> every frame.
    assert torch.equal(rows, choose_decoder_rows(batch["c0_mask"], 1 / 16, [11, 12, 13, 14]))
    assert choose_decoder_rows(batch["c0_mask"], 1.0, [0] * 4).shape[0] == sum(per_row)


def test_training_forward_matches_inference(tiny_model_dir):
    """Teacher forcing on greedily generated frames reproduces every generated code."""
    from echoforge.csm import CSMGenerator
    from echoforge.csm.loader import load_checkpoint

    gen = CSMGenerator.from_pretrained(tiny_model_dir, device="cpu")
    codes = gen.generate_codes("hello world", speaker=0, max_audio_length_ms=480, temperature=0)
    tok, msk, _ = gen.build_prompt("hello world", 0, [], 6)
    n = codes.shape[0]
    frames = torch.zeros(n, K + 1, dtype=torch.long)
    frames[:, :K] = codes
    fmask = torch.zeros(n, K + 1, dtype=torch.bool)
    fmask[:, :K] = True
    tokens, mask = torch.cat([tok, frames])[None], torch.cat([msk, fmask])[None]
    c0_mask = torch.zeros(1, tokens.shape[1] - 1, dtype=torch.bool)
    c0_mask[0, tok.shape[0] - 1 :] = True
    tm = CSMForTraining(load_checkpoint(tiny_model_dir).model)
    with torch.no_grad():
        o = tm(tokens, mask, c0_mask, c0_mask.nonzero())
    assert o.c0_count == n and o.c0_correct.item() == n
    assert o.dec_correct.item() == n * (K - 1)


def test_lora_trains_adapters_and_exports_merged(tmp_path, tiny_model_dir, synthetic_data):
    from echoforge.csm import CSMGenerator
    from echoforge.csm.loader import load_checkpoint

    cfg = _cfg(tmp_path, tiny_model_dir, synthetic_data, optim__max_steps=15, lora__enabled=True, lora__r=4,
               lora__alpha=8, optim__lr=1e-2)  # fmt: skip
    result = train(cfg, progress=False)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0]
    base = load_checkpoint(tiny_model_dir).model.state_dict()
    tuned = load_checkpoint(result["checkpoint"]).model.state_dict()
    w = "backbone.layers.0.attention.wqkv.weight"
    assert not torch.equal(base[w], tuned[w])  # adapter merged into the projection
    delta = tuned[w] - base[w]
    assert torch.linalg.matrix_rank(delta).item() <= 4  # a rank-r update
    for name in ("text_embeddings.weight", "codebook0_head.weight", "backbone.layers.0.attention_norm.weight"):
        assert torch.equal(base[name], tuned[name]), name  # frozen
    state = torch.load(f"{cfg.out_dir}/step-000015/trainer_state.pt", weights_only=False)
    assert state["lora"] and all("lora_" in k for k in state["lora"])
    assert (
        CSMGenerator.from_pretrained(result["checkpoint"], device="cpu")
        .generate_codes("hello", max_audio_length_ms=160)
        .shape[1]
        == K
    )


def test_resume_continues_exactly(tmp_path, tiny_model_dir, synthetic_data):
    cfg = _cfg(tmp_path, tiny_model_dir, synthetic_data, optim__max_steps=6, save_every=3, keep_checkpoints=3,
               optim__grad_accum=2, optim__batch_size=2)  # fmt: skip
    full = [h["loss"] for h in train(cfg, progress=False)["history"]]
    # Pretend the run died after step 3: point latest.json back there and train again.
    out = tmp_path / "run"
    step3 = out / "step-000003"
    assert (step3 / "trainer_state.pt").is_file() and (step3 / "model.safetensors").is_file()
    (out / "latest.json").write_text(json.dumps({"step": 3, "path": str(step3)}))
    shutil.rmtree(out / "step-000006")
    resumed = train(cfg, progress=False)
    assert resumed["history"][0]["step"] == 4
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], full[3:], rtol=1e-5)
    assert (out / "last").resolve() == (out / "step-000006").resolve()  # csm.model=<out_dir>/last


def test_grad_accumulation_and_checkpointing_keep_the_loss(tmp_path, tiny_model_dir, synthetic_data):
    """Global batch 4 as 1x4, 2x2 (accumulation) and with gradient checkpointing: same losses."""
    runs = {}
    for name, over in {"plain": {}, "accum": {"optim__batch_size": 2, "optim__grad_accum": 2},
                       "ckpt": {"grad_ckpt": True}}.items():  # fmt: skip
        cfg = _cfg(tmp_path / name, tiny_model_dir, synthetic_data, optim__max_steps=3, **over)
        runs[name] = [h["loss"] for h in train(cfg, progress=False)["history"]]
    np.testing.assert_allclose(runs["accum"], runs["plain"], rtol=1e-5)
    np.testing.assert_allclose(runs["ckpt"], runs["plain"], rtol=1e-5)
