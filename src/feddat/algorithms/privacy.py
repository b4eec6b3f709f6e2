"""Client-level differential privacy for the shared update (DP-FedAvg, McMahan et al., 2018).

Each client clips its update Δ_k = A_s^k − A_s to L2 norm C before it leaves (client side);
the server averages the clipped updates with equal weights and adds Gaussian noise of
standard deviation z·C/m to the mean of m updates. Opacus' RDP accountant turns
(z, sampling rate, rounds) into the ε spent so far for a given δ, reported every round.
Heads and A_c never leave the client, so only A_s needs the protection.
"""

from __future__ import annotations

import torch

from feddat.algorithms.validation import update_norm
from feddat.runtime import generator

Tensors = dict[str, torch.Tensor]


def enabled(privacy) -> bool:
    return privacy.clip_norm > 0


def clip_update(shared: Tensors, update: Tensors, clip_norm: float) -> Tensors:
    """A_s + Δ·min(1, C/‖Δ‖): the client's update with its change bounded by C."""
    norm = update_norm(update, shared)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (shared[k].double() + scale * (update[k].double() - shared[k].double())).to(shared[k].dtype) for k in shared}


def noisy_mean(shared: Tensors, clipped: list[Tensors], privacy, seed: int, round_: int) -> Tensors:
    """Equal-weight mean of clipped updates plus N(0, (z·C/m)²) per coordinate (seeded per round)."""
    m = len(clipped)
    g = generator(seed, "dp-noise", round_)
    std = privacy.noise_multiplier * privacy.clip_norm / m
    out = {}
    for k in sorted(shared):
        mean = sum(u[k].double() for u in clipped) / m
        noise = torch.randn(mean.shape, generator=g, dtype=torch.float64) * std
        out[k] = (mean + noise).to(shared[k].dtype)
    return out


class Accountant:
    """ε spent after each round, from Opacus' Rényi-DP accountant for the subsampled Gaussian."""

    def __init__(self, privacy, sample_rate: float):
        from opacus.accountants import RDPAccountant

        self.privacy = privacy
        self.sample_rate = sample_rate
        self.rdp = RDPAccountant()

    def step(self) -> float:
        self.rdp.step(noise_multiplier=self.privacy.noise_multiplier, sample_rate=self.sample_rate)
        return self.epsilon()

    def epsilon(self) -> float:
        if self.privacy.noise_multiplier <= 0:
            return float("inf")
        return float(self.rdp.get_epsilon(self.privacy.delta))

    def replay(self, rounds: int) -> None:
        """Bring a fresh accountant to where a resumed run stood (its history is the round count)."""
        for _ in range(rounds):
            self.rdp.step(noise_multiplier=self.privacy.noise_multiplier, sample_rate=self.sample_rate)
