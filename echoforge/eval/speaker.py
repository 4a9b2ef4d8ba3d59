"""Speaker embeddings for the evaluation suite — re-exported from :mod:`echoforge.analysis.speaker`.

The encoder lives in ``echoforge.analysis`` so that voice memory (``analysis/memory.py``) and the
evaluation suite share it without importing each other. Resemblyzer's d-vectors are used when
installed; the MFCC fingerprint is only a labelled fallback (see that module).
"""

from __future__ import annotations

from echoforge.analysis.speaker import (
    MFCC,
    RESEMBLYZER,
    backend_name,
    backend_note,
    cosine,
    embed_speaker,
    is_fallback,
    kmeans,
    mfcc,
    mfcc_embedding,
)

__all__ = ["MFCC", "RESEMBLYZER", "backend_name", "backend_note", "cosine", "embed_speaker", "is_fallback", "kmeans",
           "mfcc", "mfcc_embedding"]  # fmt: skip
