"""Client-level DP: clipping on the client, calibrated noise on the server, ε reported per round."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from feddat.algorithms import build_method, privacy
from feddat.algorithms.base import ClientUpdate
from feddat.engines.embedded import run_method
from feddat.peft.model import AdaptedModel


def distance(a, b) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


def test_clipping_bounds_the_change_and_keeps_small_ones():
    shared = {"w": torch.zeros(10)}
    big = privacy.clip_update(shared, {"w": torch.full((10,), 3.0)}, clip_norm=1.0)
    assert distance(big, shared) == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(big["w"], torch.full((10,), 1 / 10**0.5))  # same direction
    small = {"w": torch.full((10,), 0.01)}
    assert torch.equal(privacy.clip_update(shared, small, clip_norm=1.0)["w"], small["w"])


def test_noise_has_the_calibrated_scale_and_is_seeded(tiny_backbone):
    cfg = tiny_config(**{"privacy.clip_norm": 0.5, "privacy.noise_multiplier": 2.0})
    shared = {"w": torch.zeros(200_000)}
    clipped = [{"w": torch.zeros(200_000)} for _ in range(4)]
    out = privacy.noisy_mean(shared, clipped, cfg.privacy, seed=0, round_=3)
    assert float(out["w"].std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.01)
    assert torch.equal(out["w"], privacy.noisy_mean(shared, clipped, cfg.privacy, seed=0, round_=3)["w"])
    assert not torch.equal(out["w"], privacy.noisy_mean(shared, clipped, cfg.privacy, seed=0, round_=4)["w"])


def test_epsilon_grows_with_rounds_and_shrinks_with_noise(tiny_backbone):
    low = tiny_config(**{"privacy.clip_norm": 1.0, "privacy.noise_multiplier": 0.8})
    high = tiny_config(**{"privacy.clip_norm": 1.0, "privacy.noise_multiplier": 3.0})
    a, b = privacy.Accountant(low.privacy, 0.5), privacy.Accountant(high.privacy, 0.5)
    eps_low = [a.step() for _ in range(3)]
    eps_high = [b.step() for _ in range(3)]
    assert eps_low[0] < eps_low[1] < eps_low[2] and all(h < l for h, l in zip(eps_high, eps_low))


def test_dp_run_reports_epsilon_every_round_and_updates_are_clipped(tiny_backbone, tiny_clients, tmp_path):
    cfg = tiny_config(**{"privacy.clip_norm": 0.05, "privacy.noise_multiplier": 1.0, "federation.rounds": 2})
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    lines: list[str] = []
    run_method("fedavg", cfg, model, tiny_clients, tmp_path, torch.device("cpu"), log=lines.append)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in records if r["kind"] == "privacy"]
    assert len(eps) == 2 and eps[0] < eps[1] and all("ε=" in line for line in lines)
    method = build_method("fedavg", cfg, model, torch.device("cpu"))
    shared = method.init_shared()
    update = method.client_update(shared, method.init_client_state(tiny_clients[0]), tiny_clients[0], round_=1)
    raw = distance(update.shared, shared)
    sent = method.client_side(shared, update)
    assert raw > 0.05 and distance(sent.shared, shared) == pytest.approx(0.05, rel=1e-4)


def test_dp_is_refused_for_a_method_with_its_own_aggregation(tiny_backbone):
    cfg = tiny_config(**{"privacy.clip_norm": 1.0})
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    method = build_method("scaffold", cfg, model, torch.device("cpu"))
    shared = method.init_shared()
    with pytest.raises(ValueError, match="aggregates in its own way"):
        method.server_round(shared, [ClientUpdate("a", shared, 1, {})], round_=1)


@pytest.mark.parametrize("aggregation", ["median", "trimmed_mean"])
def test_dp_with_a_coordinate_wise_aggregation_is_refused_not_silently_replaced(aggregation):
    from feddat.config import ConfigError, load

    with pytest.raises(ConfigError, match=f"privacy.clip_norm > 0 .* needs federation.aggregation = mean \\(got {aggregation}"):
        load(None, {"privacy.clip_norm": "0.5", "federation.aggregation": aggregation})
    assert load(None, {"privacy.clip_norm": "0.5"}).federation.aggregation == "mean"
