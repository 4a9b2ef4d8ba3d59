"""Shared helpers for the training tests: a learnable synthetic dataset and tiny configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from echoforge.analysis.prosody import BASIC_PROSODY  # noqa: E402
from echoforge.train.dataset import MAX_CONTEXT_TURNS  # noqa: E402
from echoforge.train.manifest import TurnSpec  # noqa: E402
from echoforge.train.preparation import Turn, write_shards  # noqa: E402
from tests.csm.tiny_models import SPECIALS, WORDS, build_tiny_csm, tiny_tokenizer  # noqa: E402

K = 32


def synthetic_conversations(n_conv: int = 4, turns: int = 3, frames: int = 10, seed: int = 0) -> list:
    """Turns whose codes follow simple rules a tiny model can learn quickly.

    Codebook 0 walks a fixed cycle of 8 codes (start depends on the turn), codebook k is
    ``(c0 * 7 + k) % 16``: the next c0 follows from the previous one, the rest from c0.
    Text: ``<bos>[spk]words<eos>`` ids from the tiny tokenizer.
    """
    rng = np.random.default_rng(seed)
    tok = tiny_tokenizer()
    bos, eos = SPECIALS.index("<|begin_of_text|>"), SPECIALS.index("<|end_of_text|>")
    cycle = np.array([5, 9, 3, 12, 7, 1, 14, 10])
    convs = []
    for _ in range(n_conv):
        conv = []
        for t in range(turns):
            spk = t % 2
            words = " ".join(rng.choice(WORDS[18:40], size=4))
            ids = [bos, *tok.encode(f"[{spk}]{words}", add_special_tokens=False).ids, eos]
            start = int(rng.integers(8))
            c0 = cycle[(start + np.arange(frames)) % 8]
            codes = np.stack([c0] + [(c0 * 7 + k) % 16 + 16 for k in range(1, K)], axis=1)  # [F, K], all < 32
            conv.append((spk, ids, codes))
        convs.append(conv)
    return convs


AUDIO_VOCAB = 64  # small audio vocabulary: the synthetic codes are < 32, and tiny tables train fast


def tiny_args():
    from echoforge.csm.model import CSMArgs, ModelArgs

    return CSMArgs(
        backbone=ModelArgs(n_layer=2, n_head=4, n_local_heads=2, dim=64, intermediate_size=128, max_seq_len=512),
        decoder=ModelArgs(n_layer=2, n_head=4, n_local_heads=2, dim=32, intermediate_size=64),
        text_vocab_size=128,
        audio_vocab_size=AUDIO_VOCAB,
        audio_num_codebooks=K,
    )


def tiny_train_model(tmp_path: Path, seed: int = 0) -> Path:
    """A tiny transformers-format CSM whose audio vocabulary is 64 (fast to train on 2 CPU cores).

    Codec (tiny Mimi) and tokenizer come from ``build_tiny_csm``; the weights are a fresh
    ``init_weights`` CSM exported by our own exporter (so this also exercises the export).
    """
    import torch

    from echoforge.csm.model import CSM
    from echoforge.train.modeling import export_checkpoint, init_weights

    src = build_tiny_csm(tmp_path / "src", seed=seed)
    torch.manual_seed(seed)
    model = CSM(tiny_args())
    init_weights(model)
    return export_checkpoint(model.state_dict(), model.args, tmp_path / "tiny-train", src)


def tiny_config(tmp_path: Path, model_dir: Path, data_dir: Path, **over) -> dict:
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "seed": 0,
        "device": "cpu",
        "model": {"init_from": str(model_dir)},
        "data": {"path": str(data_dir), "max_seq_len": 256},
        "loss": {"decoder_fraction": 1 / 16, "decoder_weight": 0.5},
        "optim": {
            "lr": 3e-3,
            "warmup_steps": 5,
            "max_steps": 60,
            "batch_size": 4,
            "grad_accum": 1,
            "weight_decay": 0.0,
        },
        "eval_every": 0,
        "eval_batches": 2,
        "save_every": 0,
        "log_every": 20,
    }
    for key, value in over.items():
        d = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return cfg


def write_synthetic(
    out_dir: str | Path, conversations: list[list[tuple[int, list[int], np.ndarray]]], val: int = 0
) -> Path:
    """Write a dataset from ready-made turns ``(speaker, text_ids, codes [F, K])`` (tests, benchmarks).

    The last ``val`` conversations go to the validation split.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    turns = {}
    for ci, conv in enumerate(conversations):
        turns[ci] = [Turn(TurnSpec(Path(f"synthetic/{ci}"), str(s), "", None, None, str(ci), i), s,
                          np.asarray(codes, dtype=np.int16), np.asarray(ids, dtype=np.int32), np.zeros(len(BASIC_PROSODY), np.float32))
                     for i, (s, ids, codes) in enumerate(conv)]  # fmt: skip
    n_train = len(conversations) - val
    shards = {
        "train": write_shards(out, "train", [(ci, turns[ci]) for ci in range(n_train)], 1 << 30),
        "val": write_shards(out, "val", [(ci, turns[ci]) for ci in range(n_train, len(conversations))], 1 << 30),
    }
    k = int(np.asarray(conversations[0][0][2]).shape[1])
    index = {"version": 1, "model": "synthetic", "num_codebooks": k, "max_context_turns": MAX_CONTEXT_TURNS,
             "speakers": {}, "conversations": [str(i) for i in range(len(conversations))],
             "prosody_features": list(BASIC_PROSODY), "prosody_source": "none", "shards": shards, "stats": {}, "bad": []}  # fmt: skip
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return out
