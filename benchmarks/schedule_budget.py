"""How far one local update moves a parameter under the released code's learning-rate schedule
(docs/differences.md, "Learning-rate schedules"): FedAvg+Adapter against FedDAT's A_s, under a constant gradient.

The official schedule (train.lr_schedule = official) warms up over 10 % of a 15-epoch horizon
while one epoch runs. FedAvg ticks it once per minibatch; FedDAT twice (after each of its two
losses). A_s gets a gradient only at the student's tick; with the released code's single AdamW
(feddat.optimizer = single) it also moves at the DAT's tick, by momentum and weight decay.
This runs torch's AdamW (betas 0.9/0.98, weight decay 0.01, lr 1e-4) on one parameter with
gradient 1 through L minibatches and prints the distance moved, in units of lr.

    .venv/bin/python benchmarks/schedule_budget.py
"""

from __future__ import annotations

import torch

from feddat.algorithms.base import warmup_decay_factor

LR = 1e-4


def distance(minibatches: int, mode: str, schedule_epochs: int = 15, warmup_fraction: float = 0.1, constant: bool = False) -> float:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=LR, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    horizon, tick = minibatches * schedule_epochs, 0
    # per minibatch, the gradient A_s sees at each tick: None = this optimiser does not step
    ticks = {"fedavg": (1.0,), "feddat_single": (1.0, 0.0), "feddat_separate": (1.0, None)}[mode]
    for _ in range(minibatches):
        for grad in ticks:
            if grad is not None:
                opt.param_groups[0]["lr"] = LR * (1.0 if constant else warmup_decay_factor(tick, horizon, warmup_fraction))
                p.grad = torch.full((1,), grad)
                opt.step()
            tick += 1
    return -float(p.detach()) / LR


def main() -> None:
    print("distance moved in one local update, in units of lr")
    print("local steps  constant lr (any method)  official: FedAvg  FedDAT, single optimiser  FedDAT, separate optimisers")
    for steps in (32, 128, 512, 1250):
        c = distance(steps, "fedavg", constant=True)
        a, s, d = (distance(steps, m) for m in ("fedavg", "feddat_single", "feddat_separate"))
        print(f"{steps:11d}  {c:24.1f}  {a:16.1f}  {s:14.1f} ({s / a:.2f}x)  {d:17.1f} ({d / a:.2f}x)")


if __name__ == "__main__":
    main()
