"""What "the same seed gives the same numbers" guarantees (docs/guide/running.md, "Same seed, same numbers"): two
separate runs with the same seed and configuration on one machine, with one torch thread count,
give bit-for-bit equal metrics and adapters; and every run records in summary.json the
environment those numbers depend on (package versions, device, threads, CPU model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from feddat.runtime import cpu_model, load_tensors


def feddat_run(tiny_vilt_dir: str, tmp_path: Path, name: str, threads: int) -> Path:
    """`feddat run` in a fresh interpreter (nothing shared with the other run but the files)."""
    args = [
        sys.executable, "-m", "feddat.cli", "run", "--backbone.name", "vilt", "--backbone.path", tiny_vilt_dir,
        "--backbone.image_size", "32", "--backbone.max_text_len", "12", "--adapter.reduction_factor", "4",
        "--data.train_per_client", "12", "--data.test_per_client", "6", "--data.cache_dir", str(tmp_path / f"cache-{name}"),
        "--federation.rounds", "2", "--federation.eval_every", "1", "--train.batch_size", "6",
        "--run.out_dir", str(tmp_path), "--run.name", name, "--run.threads", str(threads),
    ]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp_path / name


def numbers(run_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    adapters = {f"{m}/{k}": v for m in ("feddat", "fedavg") for k, v in load_tensors(run_dir / m / "shared_adapter.safetensors").items()}
    return records, adapters


def test_same_seed_same_machine_same_threads_is_bit_for_bit(tiny_vilt_dir, tmp_path):
    first_dir, second_dir = (feddat_run(tiny_vilt_dir, tmp_path, name, threads=1) for name in ("first", "second"))
    first, second = numbers(first_dir), numbers(second_dir)
    assert first[0] == second[0]  # every loss and score, compared as exact floats
    assert first[1].keys() == second[1].keys() and all(torch.equal(first[1][k], second[1][k]) for k in first[1])
    env = json.loads((first_dir / "summary.json").read_text())["environment"]
    assert env == json.loads((second_dir / "summary.json").read_text())["environment"]
    assert env["torch_threads"] == 1 and env["device"] == "cpu" and env["cpu"] == cpu_model()
    assert env["packages"]["torch"] == torch.__version__ and env["packages"]["feddat"]
    assert {"python", "platform", "cpu_count", "cuda"} <= set(env)


def test_summary_json_holds_each_methods_final_scores_and_the_benchmark(tiny_vilt_dir, tmp_path):
    """A script reads a run's results from summary.json, not from metrics.jsonl: per method the
    final mean global (and personal) score and each client's, and the benchmark with its clients."""
    from feddat import config as config_mod
    from feddat.engines.runner import run_experiment
    from feddat.reporting import final_scores, read_metrics

    cfg = config_mod.load(None, {
        "backbone.name": "vilt", "backbone.path": tiny_vilt_dir, "backbone.image_size": 32, "backbone.max_text_len": 12,
        "adapter.reduction_factor": 4, "data.benchmark": "function", "data.train_per_client": 6, "data.test_per_client": 6,
        "data.cache_dir": str(tmp_path / "cache"), "federation.rounds": 1, "train.batch_size": 6,
        "run.out_dir": str(tmp_path), "run.name": "run", "run.threads": 1,
    })  # fmt: skip
    run_dir = run_experiment(cfg, log=lambda s: None)
    summary = json.loads((run_dir / "summary.json").read_text())
    final = final_scores(read_metrics(run_dir / "metrics.jsonl"))
    clients = [c["name"] for c in json.loads((run_dir / "clients.json").read_text())["clients"]]
    assert summary["benchmark"] == {"name": "function", "clients": clients} and len(clients) == 5
    by_method = {m["method"]: m for m in summary["methods"]}
    assert set(by_method) == {"feddat", "fedavg"}
    for method, entry in by_method.items():
        scores = entry["scores"]
        assert scores["clients"] == {c: {v: s[v] for v in ("global", "personal") if v in s} for c, s in final[method].items()}
        assert scores["global"] == sum(s["global"] for s in final[method].values()) / len(clients)
        assert ("personal" in scores) == (method == "feddat") and entry["wall_s"] > 0  # the costs stay
    assert by_method["feddat"]["scores"]["personal"] == sum(s["personal"] for s in final["feddat"].values()) / len(clients)
