"""Secure aggregation on Flower's deployment engine (Flower's SecAgg+): a real SuperLink and
three SuperNodes on 127.0.0.1; the secure aggregate equals plain aggregation (the embedded
engine, same seed and configuration) within SecAgg+'s quantisation error.

Tolerance, per coordinate of A_s after one round (`secure.error_bound`): each client's
weighted change r_k·Δ_k (r_k = round(Q·n_k/W)/Q, W = the largest n_k) is quantised by Flower
with stochastic rounding to steps of 2c/Q (c = flower.secagg_clipping_range, Q =
flower.secagg_quantization_range), an error below one step; the unmasked sum is divided by
Σ r_k, so the mean is off by less than K·(2c/Q)/Σ r_k, plus the weights' rounding to 1/Q;
both results are float32, so one rounding of each (ε₃₂·|x|) is added. One round keeps the
bound exact: in a second round the clients would train from slightly different A_s.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from feddat.engines.flower import secure
from feddat.engines.flower.launch import LocalFederation
from feddat.runtime import load_tensors
from test_flower import CLIENTS, assert_all_gone, data_root, make_config, process_tree, records  # noqa: F401 - data_root is a fixture

pytestmark = pytest.mark.slow
TRAIN = {"alpha": 12, "beta": 12, "gamma": 8}  # unequal n_k, so the weighting is exercised


@pytest.fixture(scope="module")
def unequal_root(data_root, tmp_path_factory) -> Path:
    """test_flower's three clients, gamma with only 8 training examples."""
    root = tmp_path_factory.mktemp("unequal") / "clients"
    shutil.copytree(data_root, root)
    lines = (root / "gamma" / "train.jsonl").read_text().splitlines()
    (root / "gamma" / "train.jsonl").write_text("\n".join(lines[: TRAIN["gamma"]]) + "\n")
    return root


def test_secure_aggregation_matches_plain_aggregation(tiny_vilt_dir, unequal_root, tmp_path):
    from feddat.engines.runner import run_experiment

    overrides = {"federation.rounds": 1, "federation.fraction": 1.0}
    embedded = run_experiment(make_config(tiny_vilt_dir, unequal_root, tmp_path, "plain", **overrides), log=lambda s: None)

    cfg = make_config(tiny_vilt_dir, unequal_root, tmp_path, "secure", **overrides)
    cfg.flower.secure_aggregation, cfg.flower.secagg_clipping_range = True, 1.0
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        t0 = time.perf_counter()
        run_id = fed.cli.submit(cfg)
        fed.cli.wait(run_id, timeout=600)
        wall = time.perf_counter() - t0
        log = fed.cli.run_log(run_id)
        tree = process_tree(fed) + tree
    assert_all_gone(tree)
    assert "secure aggregation (SecAgg+, 3 of 3 clients" in log, log

    run_dir = tmp_path / "secure"
    got, want = records(run_dir), records(embedded)
    assert got.keys() == want.keys()
    for key, record in want.items():  # the clients' training is the same: the metrics before aggregation agree
        if key[3] == "train":
            assert got[key].keys() == record.keys(), key
            for field, value in record.items():
                if isinstance(value, float):
                    assert got[key][field] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, field)

    bound = secure.error_bound(cfg, list(TRAIN.values()), max(TRAIN.values()))
    a = load_tensors(embedded / "feddat" / "shared_adapter.safetensors")
    b = load_tensors(run_dir / "feddat" / "shared_adapter.safetensors")
    assert a.keys() == b.keys()
    worst, excess = 0.0, 0.0
    for k in a:
        diff = (a[k].double() - b[k].double()).abs()
        tol = bound + torch.finfo(torch.float32).eps * a[k].double().abs()
        worst = max(worst, float(diff.max()))
        excess = max(excess, float((diff - tol).max()))
    print(f"\nsecure aggregation: max |secure - plain| = {worst:.3g} per coordinate, bound {bound:.3g} (c = {cfg.flower.secagg_clipping_range}, Q = {cfg.flower.secagg_quantization_range}); Flower run {wall:.1f}s")
    assert excess <= 0, f"secure aggregate off by {worst:.3g}, more than the quantisation bound {bound:.3g}"
    assert worst > 0  # stochastic quantisation leaves its trace
    summary = json.loads((run_dir / "summary.json").read_text())["methods"][0]
    assert summary["array_bytes_received"] > 0
