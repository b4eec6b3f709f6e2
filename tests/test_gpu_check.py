"""`make gpu-check`: says there is no CUDA and exits 0 here; its checks themselves run (on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_make_gpu_check_runs_the_script():
    out = subprocess.run(["make", "-n", "gpu-check"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "benchmarks/gpu_check.py" in out.stdout


def test_without_cuda_it_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no CUDA device is visible" in out.stdout and "PASS" not in out.stdout


def test_its_checks_pass_on_the_cpu(tmp_path):
    """A dry run of parts 1-2 (every method one round, both FedDAT schedules equal): the code
    that will meet the GPU runs here, so a broken check shows up before a GPU does."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--parts", "methods,schedules", "--threads", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    from feddat.algorithms import METHODS

    passed = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("PASS")}
    assert {f"methods/{m}" for m in METHODS} <= passed
    assert {"methods/bf16-autocast", "methods/fedavg+dp+norm-check", "schedules/fp32/single", "schedules/fp32/soft", "schedules/fp32/pair"} <= passed
    assert " 0 failed" in out.stdout
