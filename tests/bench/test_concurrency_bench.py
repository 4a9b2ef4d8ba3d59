"""benchmarks/concurrency.py keeps working: its whole pipeline on the tiny model, 1 and 2 streams,
a few frames, plus a 2-streams-on-1-slot queueing run (seconds; no timing asserts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_concurrency_benchmark_tiny(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("concurrency", None)
    import concurrency

    md, js = tmp_path / "bench.md", tmp_path / "line.json"
    rows = concurrency.main(["--device", "cpu", "--sizes", "tiny", "--streams", "1,2", "--frames", "3",
                             "--queue-run", "2:1", "--threads", "1", "--markdown", str(md), "--json", str(js)])  # fmt: skip
    assert [(r["streams"], r["slots"]) for r in rows] == [(1, 1), (2, 2), (2, 1)]
    for r in rows:
        # random weights never emit EOS: every stream makes exactly its budget
        assert r["total_frames"] == 3 * r["streams"], r
        assert r["agg_fps"] > 0 and r["rtf_p50"] > 0 and r["ttfa_p95_ms"] >= r["ttfa_p50_ms"] > 0
        assert r["seq_wall_s"] > 0 and r["conc_over_seq"] > 0
    assert rows[1]["max_rows_seen"] <= 2 and rows[2]["max_rows_seen"] == 1  # one slot: the second stream waited
    line = json.loads(js.read_text())
    assert line["benchmark"] == "concurrency" and len(line["rows"]) == 3
    text = md.read_text()
    assert "## CSM concurrency" in text and "| tiny | 2 / 1 | 3 |" in text
