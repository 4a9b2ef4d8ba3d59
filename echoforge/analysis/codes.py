"""Features of Mimi codes — usable when only codes exist (e.g. the engine's own output).

Codebook 0 carries mostly semantic/phonetic content, codebooks 1..N acoustic detail. For each
group: token entropy (bits; how varied the tokens are), change rate (fraction of frames whose
token differs from the previous frame) and repetition (fraction of frames repeating one of the
previous 4 tokens — high values flag stuck or looping generation).
"""

from __future__ import annotations

import numpy as np


def _entropy(tokens: np.ndarray) -> float:
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _stats(col: np.ndarray) -> dict[str, float]:
    if col.size < 2:
        return {"entropy_bits": 0.0, "change_rate": 0.0, "repetition": 0.0}
    rep = np.mean([col[i] in col[max(0, i - 4) : i] for i in range(1, col.size)])
    return {"entropy_bits": _entropy(col), "change_rate": float(np.mean(col[1:] != col[:-1])), "repetition": float(rep)}


def code_features(codes) -> dict[str, dict[str, float] | int]:
    """``codes``: [frames, K] integers (numpy or torch) → semantic and acoustic statistics."""
    arr = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"codes must be [frames, codebooks], got shape {arr.shape}")
    semantic = _stats(arr[:, 0])
    acoustic = [_stats(arr[:, k]) for k in range(1, arr.shape[1])]
    mean_acoustic = {key: float(np.mean([a[key] for a in acoustic])) if acoustic else 0.0 for key in semantic}
    return {"frames": int(arr.shape[0]), "semantic": semantic, "acoustic": mean_acoustic}
