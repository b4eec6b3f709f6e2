"""Time per local step: FedAvg+Adapter vs FedDAT (reference and fused schedules).

`feddat-fused` is exact (same maths as the reference); `feddat-branch1` and `feddat-branch2`
are the fused schedule with feddat.branch_site = 1 / 2, a deliberate difference (the
teacher reuses the student's lowest sites; docs/guide/speed.md shows what it does to scores).

Prints, for the embedded default (foundation) and a ViLT-B/32-sized backbone (random weights,
the real architecture and sizes): ms per local step, samples per second, the ratio to
FedAvg+Adapter measured in this same process, and peak memory.
Variants are interleaved over repeats and the median is reported, so a noisy neighbour
affects all of them alike. Nothing is asserted: these are figures to read.

    .venv/bin/python benchmarks/bench_step.py                 # both backbones
    .venv/bin/python benchmarks/bench_step.py --backbones foundation --repeats 5
    .venv/bin/python benchmarks/bench_step.py --backbones foundation --precision fp32   # float32 on the CPU
    .venv/bin/python benchmarks/bench_step.py --backbones foundation --prefix-cache-mb 0   # without the cached frozen prefix
    .venv/bin/python benchmarks/bench_step.py --backbones foundation --blocks 3,4,5        # adapters in the top blocks only

The model is built as a run builds it (`AdaptedModel.from_config`, `run.prefix_cache_mb`): the
warm-up update fills the cache of the frozen blocks below the lowest adapter site, so the timed
steps are those of every round after a run's first.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from feddat.algorithms import build_method
from feddat.backbones import backbone_from_config
from feddat.config import Config
from feddat.data.clients import load_clients
from feddat.peft.model import AdaptedModel
from feddat.runtime import pick_device, set_threads, uses_bf16

VARIANTS = {  # label -> (method, feddat.schedule, feddat.branch_site)
    "fedavg": ("fedavg", None, 0),
    "feddat-reference": ("feddat", "reference", 0),
    "feddat-fused": ("feddat", "fused", 0),
    "feddat-branch1": ("feddat", "fused", 1),
    "feddat-branch2": ("feddat", "fused", 2),
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_in_child(backbone: str, label: str, batch: int, steps: int, precision: str, model_args: list[str]) -> float:
    """Peak resident memory of a fresh process that trains one variant (CPU has no allocator
    statistics, and a process's high-water mark never goes down, so each variant gets its own)."""
    cmd = [sys.executable, __file__, "--memory-child", label, "--backbones", backbone, "--batch", str(batch), "--vilt-batch", str(batch), "--steps", str(steps), "--precision", precision, *model_args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"memory run of {label} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def build(backbone_name: str, device: torch.device, batch: int, precision: str, blocks: list[int], prefix_cache_mb: int):
    cfg = Config()
    cfg.run.precision, cfg.run.prefix_cache_mb, cfg.adapter.blocks = precision, prefix_cache_mb, blocks
    cfg.train.batch_size, cfg.train.local_epochs = batch, 1
    if backbone_name in ("foundation", "minivl"):
        cfg.backbone.name = backbone_name
        backbone = backbone_from_config(cfg.backbone)  # what a run on this backbone builds
    else:  # ViLT-B/32 dimensions (hidden 768, 12 blocks, 384 px, 40 tokens), random weights: no download
        from transformers import AutoTokenizer, ViltConfig, ViltModel

        from feddat.backbones.minivl import minilm_path
        from feddat.backbones.vilt import ViLT

        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        backbone = ViLT(ViltModel(ViltConfig()), tokenizer, image_size=384, max_text_len=40, source="random-vilt-b32")
        cfg.backbone.name, cfg.backbone.image_size, cfg.backbone.max_text_len = "vilt", 384, 40
    return cfg, backbone.to(device)


def make_client(cfg: Config, backbone, n: int):
    """The first client of the synthetic domain benchmark, with exactly n training examples."""
    cfg.data.train_per_client, cfg.data.test_per_client, cfg.data.cache_dir = n, 8, ""
    return load_clients(cfg, backbone, log=lambda _: None)[0]


def build_variants(name: str, device: torch.device, batch: int, steps: int, precision: str, blocks: list[int], prefix_cache_mb: int):
    cfg, backbone = build(name, device, batch, precision, blocks, prefix_cache_mb)
    model = AdaptedModel.from_config(backbone, cfg.adapter, cfg.run.prefix_cache_mb)
    client = make_client(cfg, backbone, batch * steps)
    methods = {}
    for label, (method_name, schedule, branch_site) in VARIANTS.items():
        variant_cfg = copy.deepcopy(cfg)
        if schedule:
            variant_cfg.feddat.schedule = schedule
        variant_cfg.feddat.branch_site = branch_site
        method = build_method(method_name, variant_cfg, model, device)
        methods[label] = (method, method.init_shared(), method.init_client_state(client))
    return client, methods


def bench_backbone(name: str, device: torch.device, batch: int, steps: int, repeats: int, precision: str, blocks: list[int], prefix_cache_mb: int) -> list[dict]:
    client, methods = build_variants(name, device, batch, steps, precision, blocks, prefix_cache_mb)
    times = {label: [] for label in VARIANTS}
    peaks = {label: 0.0 for label in VARIANTS}
    for label, (method, shared, state) in methods.items():  # warm-up: allocator, kernels, caches
        method.client_update(shared, state, client, round_=0)
    for r in range(repeats):
        for label, (method, shared, state) in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            update = method.client_update(shared, state, client, round_=r + 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks[label] = max(peaks[label], torch.cuda.max_memory_allocated() / 2**20)
            times[label].append((time.perf_counter() - t0) / update.metrics["steps"])
    if device.type != "cuda":
        model_args = ["--blocks", ",".join(map(str, blocks)), "--prefix-cache-mb", str(prefix_cache_mb)]
        peaks = {label: memory_in_child(name, label, batch, steps, precision, model_args) for label in VARIANTS}
    base = statistics.median(times["fedavg"])
    return [
        {"backbone": name, "variant": label, "ms_per_step": 1000 * statistics.median(t), "samples_per_s": batch / statistics.median(t), "ratio": statistics.median(t) / base, "peak_mib": peaks[label]}
        for label, t in times.items()
    ]


def memory_child(name: str, label: str, batch: int, steps: int, precision: str, blocks: list[int], prefix_cache_mb: int) -> None:
    client, methods = build_variants(name, torch.device("cpu"), batch, steps, precision, blocks, prefix_cache_mb)
    method, shared, state = methods[label]
    for round_ in range(2):
        method.client_update(shared, state, client, round_=round_)
    print(peak_rss_mib())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="foundation,vilt-b32", help="comma list of foundation, minivl, vilt-b32")
    p.add_argument("--batch", type=int, default=32, help="minibatch size for foundation and minivl (ViLT-B/32 uses --vilt-batch)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="run.precision (auto: bf16 where it is native)")
    p.add_argument("--vilt-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="local steps per timed update")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--blocks", default="", help="adapter.blocks: comma list of blocks with adapters (default: every block)")
    p.add_argument("--prefix-cache-mb", type=int, default=Config().run.prefix_cache_mb, help="run.prefix_cache_mb (0: every step runs the frozen blocks below the lowest adapter site)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    set_threads(args.threads)
    blocks = [int(b) for b in args.blocks.split(",") if b]
    if args.memory_child:
        memory_child(args.backbones, args.memory_child, args.batch, args.steps, args.precision, blocks, args.prefix_cache_mb)
        return 0
    device = pick_device(args.device)
    numerics = "bf16 autocast" if uses_bf16(device, args.precision) else "float32"
    print(f"device {device} ({numerics}, run.precision {args.precision}), {torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.repeats} interleaved repeats")
    print(f"adapters in blocks {args.blocks or 'all'}, prefix cache {f'{args.prefix_cache_mb} MiB' if args.prefix_cache_mb else 'off'}")
    print(f"{'backbone':<10} {'variant':<18} {'ms/step':>9} {'samples/s':>10} {'x fedavg':>9} {'peak MiB':>9}")
    print("(peak MiB: GPU allocator peak on CUDA; on CPU the resident high-water mark of a fresh process training that variant, model included)")
    for name in args.backbones.split(","):
        batch = args.vilt_batch if name == "vilt-b32" else args.batch
        steps = max(1, args.steps // 2) if name == "vilt-b32" else args.steps
        print(f"-- {name}: batch {batch}, {steps} local steps per timed update")
        for row in bench_backbone(name, device, batch, steps, args.repeats, args.precision, blocks, args.prefix_cache_mb):
            print(f"{row['backbone']:<10} {row['variant']:<18} {row['ms_per_step']:9.1f} {row['samples_per_s']:10.1f} {row['ratio']:9.2f} {row['peak_mib']:9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
