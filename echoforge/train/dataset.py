"""Reading a prepared dataset for training: the memory-mapped shards (:class:`ShardedDataset`),
one sample -> one sequence in the generator's prompt layout (:func:`build_rows`), batches
(:func:`collate`) and the frames that also train the depth decoder (:func:`choose_decoder_rows`).

The shard format (written by :mod:`echoforge.train.preparation`) is defined here:
:data:`TURN_COLUMNS` and at most :data:`MAX_CONTEXT_TURNS` context turns per sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echoforge.csm.prompt import segment_rows

MAX_CONTEXT_TURNS = 5
TURN_COLUMNS = ("code_start", "n_frames", "text_start", "n_text", "speaker", "conv")


class ShardedDataset:
    """Memory-mapped samples of one split. ``ds[i]`` -> list of segments ``(text_ids, codes)``, target last."""

    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise ValueError(f"{self.root}: not a prepared dataset (no index.json); run `echoforge data prepare` first")
        self.index = json.loads(index_path.read_text())
        self.shards = []
        for name in self.index["shards"].get(split, []):
            arrays = {
                k: np.load(self.root / f"{name}.{k}.npy", mmap_mode="r") for k in ("codes", "text", "turns", "samples")
            }
            self.shards.append(arrays)
        # (shard, sample row) for every sample
        self.items = [(s, r) for s, arr in enumerate(self.shards) for r in range(arr["samples"].shape[0])]
        self.num_codebooks = int(self.index.get("num_codebooks", 32))

    def target_lengths(self) -> np.ndarray:
        """Rows each sample's target turn alone needs (text + frames + EOS frame), ``[len(self)]``."""
        parts = []
        for arr in self.shards:
            t = np.asarray(arr["samples"][:, 0])
            parts.append(np.asarray(arr["turns"][t, 1] + arr["turns"][t, 3] + 1))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        s, r = self.items[i]
        arr = self.shards[s]
        target, n_ctx = (int(x) for x in arr["samples"][r])
        segments = []
        for t in range(target - n_ctx, target + 1):
            c0, nf, t0, nt = (int(x) for x in arr["turns"][t, :4])
            segments.append((np.asarray(arr["text"][t0 : t0 + nt]), np.asarray(arr["codes"][c0 : c0 + nf])))
        return segments


def build_rows(segments: list[tuple[np.ndarray, np.ndarray]], num_codebooks: int, max_seq_len: int,
               loss_on_context: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:  # fmt: skip
    """One training sequence in the generator's prompt layout (:func:`echoforge.csm.prompt.segment_rows`).

    Each segment is ``text rows`` then ``audio rows`` + one all-zero EOS frame. The oldest
    context segments are dropped until the sequence fits ``max_seq_len``; a target that
    cannot fit alone returns None.

    Returns:
        ``tokens [T, K+1]`` int64, ``mask [T, K+1]`` bool, ``scored [T]`` bool (True for audio
        rows that carry loss: every audio row, or only the target's if not ``loss_on_context``).
    """
    lengths = [text.size + codes.shape[0] + 1 for text, codes in segments]
    while len(segments) > 1 and sum(lengths) > max_seq_len:
        segments, lengths = segments[1:], lengths[1:]
    if sum(lengths) > max_seq_len:
        return None
    parts = [segment_rows(text, codes, num_codebooks) for text, codes in segments]
    tokens = np.concatenate([p[0] for p in parts])
    mask = np.concatenate([p[1] for p in parts])
    scored = np.zeros(tokens.shape[0], dtype=bool)
    p = 0
    for j, ((text, _codes), n) in enumerate(zip(segments, lengths, strict=True)):
        if loss_on_context or j == len(segments) - 1:
            scored[p + text.size : p + n] = True  # the audio rows and the EOS frame
        p += n
    return tokens, mask, scored


def collate(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Right-pad sequences into a batch.

    Returns ``tokens [B, T, K+1]``, ``tokens_mask [B, T, K+1]`` and ``c0_mask [B, T-1]``
    (True where row ``t+1`` is scored; the first row is never a target).
    """
    b, t = len(rows), max(r[0].shape[0] for r in rows)
    width = rows[0][0].shape[1]
    tokens = torch.zeros(b, t, width, dtype=torch.long)
    mask = torch.zeros(b, t, width, dtype=torch.bool)
    scored = torch.zeros(b, t, dtype=torch.bool)
    for i, (tok, msk, sc) in enumerate(rows):
        n = tok.shape[0]
        tokens[i, :n], mask[i, :n], scored[i, :n] = torch.from_numpy(tok), torch.from_numpy(msk), torch.from_numpy(sc)
    return {"tokens": tokens, "tokens_mask": mask, "c0_mask": scored[:, 1:].contiguous()}


def choose_decoder_rows(c0_mask: Any, fraction: float, seeds: list[int]) -> Any:
    """Pick the frames that also train the depth decoder: ``max(1, round(n * fraction))`` per sequence.

    Each row draws with its own seed (derived from the step and the sample's index), so the
    choice does not depend on how a global batch is split over ranks or micro-batches.

    Returns:
        ``[N, 2]`` long ``(b, t)`` positions into ``c0_mask``.
    """
    picks = []
    for b, seed in enumerate(seeds):
        pos = c0_mask[b].nonzero().squeeze(-1)  # [n]
        n = pos.numel()
        if n == 0:
            continue
        keep = n if fraction >= 1 else max(1, round(n * fraction))
        g = torch.Generator().manual_seed(seed)
        chosen = pos[torch.randperm(n, generator=g)[:keep]].sort().values
        picks.append(torch.stack([torch.full_like(chosen, b), chosen], dim=1))
    return torch.cat(picks) if picks else torch.zeros(0, 2, dtype=torch.long)
