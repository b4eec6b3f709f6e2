"""`make gpu-check`: the CUDA + bf16 path, part by part, on a machine with a GPU (well under 8 minutes).

CI never runs this (it has no GPU); run it by hand on the first GPU at hand and quote its output.
Each check prints one PASS or FAIL line; the exit status is 1 if any check failed.

1. methods:   every method, one round (three clients: single-label, soft-score VQA, two images),
              on a tiny random ViLT on CUDA with bf16 autocast: the backbone really runs in bf16,
              losses and scores are finite, and every tensor that crosses the client/server
              boundary is on the CPU; plus FedAvg with DP clipping and update-norm validation.
2. schedules: FedDAT's reference and fused schedules give the same losses and parameters to float
              tolerance on CUDA (in float32, `run.precision fp32`, as tests/test_feddat.py does on
              the CPU); the same comparison under bf16 is printed, not judged.
3. run:       one short `feddat run` on CUDA (the default foundation backbone and domain twin, 1 round,
              FedDAT and FedAvg) ends with its table, and summary.json records the CUDA device.
4. bench:     benchmarks/bench_step.py on CUDA: ms per local step and FedDAT/FedAvg ratios for the
              foundation and the ViLT-B/32-sized backbones.

Without CUDA it says so and exits 0. `--device cpu` runs the same checks on the CPU (a dry run of
this script itself; tests/test_gpu_check.py does that for parts 1-3).

    .venv/bin/python benchmarks/gpu_check.py                      # = make gpu-check
    .venv/bin/python benchmarks/gpu_check.py --parts methods,schedules
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("methods", "schedules", "run", "bench")
TINY_IMAGE = 32
RUN_TIMEOUT_S = 200
BENCH_TIMEOUT_S = 240


class Checks:
    """PASS/FAIL lines and their count."""

    def __init__(self):
        self.passed, self.failed = 0, 0

    def record(self, name: str, ok: bool, detail: str = "") -> None:
        self.passed += ok
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)

    def run(self, name: str, check: Callable[[], str]) -> None:
        """`check` returns a detail line, or raises (AssertionError or any other error) to fail."""
        try:
            self.record(name, True, check())
        except Exception as err:  # a check that breaks is a failed check, and the rest still run
            last = traceback.format_exception(err)[-3:]
            self.record(name, False, f"{type(err).__name__}: {err}".strip()[:500] + "\n      " + "      ".join(last)[-1500:])


# ---- the tiny backbone and clients (as tests/conftest.py builds them) ------------------------------


def tiny_vilt(folder: Path) -> str:
    """A 2-block ViLT with hidden size 32, random weights, and the packaged MiniLM tokenizer."""
    from feddat.backbones.vilt import save_random_vilt

    return save_random_vilt(folder, image_size=TINY_IMAGE)


def tiny_config(**overrides):
    from feddat.config import Config

    cfg = Config()
    cfg.backbone.name, cfg.backbone.image_size, cfg.backbone.max_text_len = "vilt", TINY_IMAGE, 12
    cfg.adapter.reduction_factor = 4
    cfg.train.batch_size, cfg.train.lr, cfg.train.local_epochs, cfg.train.eval_batch_size = 8, 1e-2, 1, 8
    cfg.peft.prompt_length = 2  # 12 question tokens + the prompt within the tiny ViLT's 16 positions
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def raw(n: int, seed: int, answers: tuple[str, ...], soft: bool = False, pair: bool = False):
    from feddat.data.clients import RawSplit

    rng = np.random.default_rng(seed)
    images = lambda: rng.integers(0, 256, (n, TINY_IMAGE, TINY_IMAGE, 3), dtype=np.uint8)  # noqa: E731
    chosen = [answers[i % len(answers)] for i in range(n)]
    split = RawSplit(images(), [f"what colour is object {i}?" for i in range(n)], chosen, key=f"gpu-check-{n}-{seed}-{soft}-{pair}")
    if soft:  # ten annotators: six agree, four give the next answer
        split.answer_lists = [[a] * 6 + [answers[(i + 1) % len(answers)]] * 4 for i, a in enumerate(chosen)]
        split.eval_answers = split.answer_lists
    if pair:
        split.images2 = images()
    return split


def tiny_clients(backbone):
    from feddat.data.clients import build_client

    specs = [("single", ("red", "blue", "green"), False, False), ("soft", ("one", "two", "three"), True, False), ("pair", ("true", "false"), False, True)]
    return [build_client(name, raw(16, i, a, soft, pair), raw(8, 100 + i, a, soft, pair), backbone, 100, None, task="nlvr2" if pair else "vqa") for i, (name, a, soft, pair) in enumerate(specs)]


def off_home(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k} on {v.device}" for k, v in tensors.items() if v.device.type != "cpu"]


def finite(values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


# ---- part 1: every method, one round ------------------------------------------------------------------


def one_round(name: str, cfg, model, clients, device) -> str:
    from feddat.algorithms import build_method

    method = build_method(name, cfg, model, device)
    shared = method.init_shared()
    states = {c.name: method.init_client_state(c) for c in clients}
    if method.pooled:
        new_shared, states, metrics = method.pooled_update(shared, states, clients, 1)
        losses = [metrics["loss"]]
    else:
        updates = [method.client_side(shared, method.client_update(shared, states[c.name], c, 1)) for c in clients]
        for u in updates:
            assert not off_home(u.shared) and not off_home(u.state), f"client {u.client}: {off_home(u.shared) + off_home(u.state)}"
        losses = [v for u in updates for k, v in u.metrics.items() if "loss" in k]
        new_shared, rejected = method.server_round(shared, updates, 1)
        assert not rejected, f"updates rejected: {rejected}"
        states = {u.client: u.state for u in updates}
    assert not off_home(new_shared), f"A_s after the round: {off_home(new_shared)}"
    assert not off_home(method.server_state()), "server state off the CPU"
    assert finite(losses), f"non-finite losses {losses}"
    assert all(torch.isfinite(t).all() for t in new_shared.values()), "non-finite A_s"
    if method.communicates and shared:
        assert any(not torch.equal(shared[k], new_shared[k]) for k in shared), "A_s did not move"
    scores = [method.evaluate(new_shared, states[c.name], c) for c in clients]
    assert all(finite(s.values()) and 0.0 <= s["global"] <= 1.0 for s in scores), f"scores {scores}"
    return f"loss {sum(losses) / len(losses):.3f}, global {sum(s['global'] for s in scores) / len(scores):.3f}"


def bf16_active(cfg, model, clients, device) -> str:
    """The backbone's pooled output is bf16 under the run's autocast (run.precision auto: on CUDA,
    and on a CPU with native bf16), float32 otherwise."""
    from feddat.algorithms import build_method

    method = build_method("fedavg", cfg, model, device)
    method.model.load_adapter("shared", method.init_shared())
    batch = clients[0].train.batch(torch.arange(4), device)
    with torch.no_grad(), method.model.active("shared"):
        dtype = method.represent(batch).dtype
    from feddat.runtime import uses_bf16

    expected = torch.bfloat16 if uses_bf16(device, cfg.run.precision) else torch.float32
    assert dtype == expected, f"pooled output is {dtype}, expected {expected}"
    return f"pooled output {dtype}"


def check_methods(checks: Checks, device, work: Path) -> None:
    from feddat.algorithms import METHODS
    from feddat.backbones import build_backbone
    from feddat.peft.model import AdaptedModel

    backbone = build_backbone("vilt", tiny_vilt(work / "tiny-vilt"), image_size=TINY_IMAGE, max_text_len=12).to(device)
    clients = tiny_clients(backbone)
    model = AdaptedModel(backbone, reduction_factor=4)
    cfg = tiny_config(**{"run.device": device.type})
    checks.run("methods/bf16-autocast", lambda: bf16_active(cfg, model, clients, device))
    for name in METHODS:
        checks.run(f"methods/{name}", lambda name=name: one_round(name, cfg, model, clients, device))
    guarded = tiny_config(**{"run.device": device.type, "privacy.clip_norm": 1.0, "federation.max_update_norm": 1e3})
    checks.run("methods/fedavg+dp+norm-check", lambda: one_round("fedavg", guarded, model, clients, device))


# ---- part 2: both FedDAT schedules agree ---------------------------------------------------------------


def schedule_difference(precision: str, model, client, device) -> tuple[float, float, list[str]]:
    """(largest absolute difference of the logged losses, largest absolute difference of any
    returned tensor, what differs beyond tests/test_feddat.py's tolerance) between the schedules."""
    from feddat.algorithms import build_method

    updates = {}
    for schedule in ("reference", "fused"):
        cfg = tiny_config(**{"feddat.schedule": schedule, "run.precision": precision, "run.device": device.type})
        method = build_method("feddat", cfg, model, device)
        updates[schedule] = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    ref, fused = updates["reference"], updates["fused"]
    loss_diff = max(abs(fused.metrics[k] - ref.metrics[k]) for k in ref.metrics)
    beyond, tensor_diff = [], 0.0
    for k in ref.metrics:
        if not math.isclose(fused.metrics[k], ref.metrics[k], rel_tol=1e-4, abs_tol=1e-6):
            beyond.append(f"metric {k}")
    for part, a, b in (("shared", ref.shared, fused.shared), ("state", ref.state, fused.state)):
        for k in a:
            tensor_diff = max(tensor_diff, float((a[k] - b[k]).abs().max()))
            # atol 1e-5 for parameters: Adam moves a weight by about lr (1e-2 here) per step whatever
            # its gradient's size, so float rounding in a near-zero gradient shows up at ~1e-6
            # (seen: A_c's lowest up-projection, soft targets, 2.7e-6 on the CPU); 1e-5 is 1/1000 of a step.
            if not torch.allclose(b[k], a[k], rtol=1e-4, atol=1e-5):
                beyond.append(f"{part} {k}")
    return loss_diff, tensor_diff, beyond


def check_schedules(checks: Checks, device, work: Path) -> None:
    from feddat.backbones import build_backbone
    from feddat.peft.model import AdaptedModel

    folder = work / "tiny-vilt"
    path = str(folder) if folder.is_dir() else tiny_vilt(folder)
    backbone = build_backbone("vilt", path, image_size=TINY_IMAGE, max_text_len=12).to(device)
    clients = tiny_clients(backbone)
    model = AdaptedModel(backbone, reduction_factor=4)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (PyTorch's default, made sure)

    def exact(client) -> str:
        loss_diff, tensor_diff, beyond = schedule_difference("fp32", model, client, device)
        assert not beyond, f"beyond rtol 1e-4 / atol 1e-6 (losses) or 1e-5 (tensors): {beyond[:5]}"
        return f"fp32: losses within {loss_diff:.1e}, tensors within {tensor_diff:.1e}"

    for client in clients:
        checks.run(f"schedules/fp32/{client.name}", lambda client=client: exact(client))
    if device.type == "cuda":
        loss_diff, tensor_diff, beyond = schedule_difference("bf16", model, clients[0], device)
        print(f"INFO  schedules/bf16/{clients[0].name}  losses within {loss_diff:.1e}, tensors within {tensor_diff:.1e}; {len(beyond)} value(s) beyond the fp32 tolerance (not judged: bf16 rounds differently in a doubled batch)")


# ---- part 3: a short `feddat run` ---------------------------------------------------------------------


def check_run(checks: Checks, device, work: Path) -> None:
    out = work / "runs"
    cmd = [
        sys.executable, "-m", "feddat.cli", "run", "--run.device", device.type, "--run.out_dir", str(out), "--run.name", "gpu-check",
        "--federation.rounds", "1", "--data.train_per_client", "64", "--data.test_per_client", "32", "--data.cache_dir", str(work / "cache"),
    ]  # fmt: skip

    def short_run() -> str:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
        summary = json.loads((out / "gpu-check" / "summary.json").read_text())
        recorded = summary["environment"]["device"]
        assert recorded.startswith(device.type), f"summary.json records device {recorded}"
        assert "| feddat | global |" in proc.stdout and "| fedavg | global |" in proc.stdout, "no results table"
        steps = {s["method"]: s["s_per_local_step"] * 1000 for s in summary["methods"]}
        return f"{time.perf_counter() - t0:.0f}s on {recorded} ({summary['environment'].get('gpu', 'no GPU')}); ms per local step " + ", ".join(f"{m} {v:.0f}" for m, v in steps.items())

    checks.run("run/feddat-run", short_run)


# ---- part 4: bench_step.py ------------------------------------------------------------------------------


def check_bench(checks: Checks, device, work: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--device", device.type, "--repeats", "3"]

    def bench() -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, cwd=ROOT)
        print(proc.stdout, end="", flush=True)
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
        rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["foundation"], ["vilt-b32"])]
        assert len(rows) == 10, f"expected 5 variants x 2 backbones, got {len(rows)} rows"
        ratios = {(r[0], r[1]): float(r[4]) for r in rows}
        return "FedDAT fused / FedAvg: " + ", ".join(f"{b} {ratios[(b, 'feddat-fused')]:.2f}x" for b in ("foundation", "vilt-b32"))

    checks.run("bench/bench_step", bench)


CHECKS = {"methods": check_methods, "schedules": check_schedules, "run": check_run, "bench": check_bench}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default; without CUDA the check says so and exits 0) or cpu (a dry run)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible (torch.cuda.is_available() is False); nothing to check on this machine. Run `make gpu-check` on a machine with a GPU.")
        return 0
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {unknown}: choose from {', '.join(PARTS)}")
    from feddat.runtime import environment, set_threads

    set_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print(f"gpu-check on {env.get('gpu', device)}: torch {env['packages']['torch']} (CUDA {env['cuda']}), {env['cpu']}, {env['torch_threads']} threads")
    checks, t0 = Checks(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="feddat-gpu-check-") as tmp:
        for part in parts:
            print(f"-- {part}", flush=True)
            CHECKS[part](checks, device, Path(tmp))
    print(f"gpu-check: {checks.passed} passed, {checks.failed} failed in {time.perf_counter() - t0:.0f}s")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
