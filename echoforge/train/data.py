"""The training-data API under its old import path, for scripts written against it.

The code lives by job: :mod:`echoforge.train.manifest` (manifest rows), :mod:`echoforge.train.preparation`
(``echoforge data prepare``: recordings -> shards) and :mod:`echoforge.train.dataset` (reading shards
for training). Import from those in new code.
"""

from __future__ import annotations

from echoforge.train.dataset import MAX_CONTEXT_TURNS, ShardedDataset, build_rows, choose_decoder_rows, collate
from echoforge.train.manifest import read_manifest
from echoforge.train.preparation import PrepareReport, prepare

__all__ = [
    "MAX_CONTEXT_TURNS",
    "PrepareReport",
    "ShardedDataset",
    "build_rows",
    "choose_decoder_rows",
    "collate",
    "prepare",
    "read_manifest",
]
