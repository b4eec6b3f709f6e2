"""The baselines (docs/design.md §5): each test pins the rule that makes a method that method, and
fails if the rule is removed."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from feddat.algorithms import METHODS, build_method
from feddat.algorithms.base import ClientUpdate
from feddat.algorithms.common import prefixed
from feddat.compare import trainable_parameters
from feddat.engines.embedded import run_method
from feddat.peft.model import AdaptedModel

CPU = torch.device("cpu")


def make(tiny_backbone, name, **overrides):
    cfg = tiny_config(**overrides)
    cfg.peft.prompt_length = 2  # the tiny ViLT has 16 text positions for 12 question tokens
    cfg.peft.lora_rank = 2
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    return cfg, model, build_method(name, cfg, model, CPU)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in b)) ** 0.5


def constant_like(state, value):
    return {k: torch.full_like(v, value) for k, v in state.items()}


def first_update(method, client, **kw):
    return method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1, **kw)


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"feddat", "fedavg", "local", "centralised", "head_only"}))
def test_every_new_method_runs_two_rounds_and_reports_scores(tiny_backbone, tiny_clients, tmp_path, name):
    cfg = tiny_config(**{"federation.rounds": 2})
    cfg.peft.prompt_length, cfg.peft.lora_rank = 2, 2
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    summary = run_method(name, cfg, model, tiny_clients[:1], tmp_path, CPU, log=lambda s: None)
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert {r["round"] for r in evals} == {1, 2}
    assert all(0.0 <= r["global"] <= 1.0 for r in evals)
    assert all(("personal" in r) == METHODS[name].personal for r in evals)
    assert summary["shared_params"] > 0 and summary["bytes_up_per_round"] > 0


# ---- PEFT kinds under FedAvg ----------------------------------------------------------------


def backbone_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k and "adapters" not in k}


def test_lora_trains_peft_lora_on_the_attention_projections_only(tiny_backbone, tiny_clients):
    from peft.tuners.lora import LoraLayer

    cfg, model, method = make(tiny_backbone, "fedavg_lora")
    shared = method.init_shared()
    assert shared and all(k.endswith(("lora_A", "lora_B")) for k in shared)
    assert {k.split(".")[-2] for k in shared} == {"query", "value"}  # peft.lora_targets
    assert all(isinstance(method.model.layers[k.rsplit(".", 1)[0]], LoraLayer) for k in shared)
    r = cfg.peft.lora_rank
    assert all(v.shape[0] == r for k, v in shared.items() if k.endswith("lora_A"))
    assert all(v.shape[1] == r and not v.any() for k, v in shared.items() if k.endswith("lora_B"))  # B = 0: starts as the backbone
    before = backbone_weights(model)
    update = first_update(method, tiny_clients[0])
    assert distance(update.shared, shared) > 0
    after = backbone_weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the backbone must stay frozen"
    # the trained LoRA changes what the model computes; with no set active it is the bare backbone
    batch = tiny_clients[0].test.batch(torch.arange(4), CPU)
    with torch.no_grad():
        bare = model(*batch[:3])
        with method.model.active("shared"):
            adapted = method.model(*batch[:3])
        assert torch.allclose(method.model(*batch[:3]), bare)
    assert not torch.allclose(adapted, bare)


def test_lora_mean_mode_is_the_mean_of_the_two_low_rank_updates(tiny_backbone):
    cfg, model, method = make(tiny_backbone, "feddat_lora")
    view = method.model
    torch.manual_seed(0)
    for name in ("frozen", "client"):
        view.load_adapter(name, {k: torch.randn_like(v) for k, v in view.new_adapter_state().items()})
    layer = next(iter(view.layers.values()))
    x = torch.randn(3, layer.get_base_layer().in_features)
    with torch.no_grad():
        with view.active("frozen"):
            a = layer(x)
        with view.active("client"):
            b = layer(x)
        with view.active("frozen", "client"):
            both = layer(x)
    assert torch.allclose(both, (a + b) / 2, atol=1e-6)


def test_feddat_on_lora_moves_shared_and_client_sets_in_their_own_steps(tiny_backbone, tiny_clients, monkeypatch):
    cfg, model, method = make(tiny_backbone, "feddat_lora")
    view = method.model
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    assert set(shared) == set(view.new_adapter_state())  # A_s is LoRA tensors
    assert {k.split(".")[0] for k in state} == {"head", "client"}
    steps = []
    make_optimizer = method.optimizer

    def spying(params, *step_count, **schedule):
        opt = make_optimizer(params, *step_count, **schedule)
        opt.register_step_post_hook(lambda *_: steps.append({n: view.adapter_state(n) for n in ("shared", "frozen", "client")}))
        return opt

    monkeypatch.setattr(method, "optimizer", spying)
    update = method.client_update(shared, state, client, round_=1)
    final = steps[-1]
    assert distance(final["frozen"], shared) == 0, "Â_s must never move"
    assert distance(final["shared"], shared) > 0 and distance(update.shared, shared) > 0
    assert distance(final["client"], prefixed(state, "client")) > 0
    scores = method.evaluate(update.shared, update.state, client)
    assert set(scores) == {"global", "personal"}


def test_feddat_on_lora_runs_the_reference_schedule_and_refuses_a_branch_site(tiny_backbone):
    """The default feddat.schedule (fused: the fastest exact schedule) runs as the reference on
    LoRA, and the user's config is left as written; a branch site, which only the fused schedule
    has, is refused naming the key and the value it can run."""
    from feddat.config import ConfigError

    cfg, _, method = make(tiny_backbone, "feddat_lora")
    assert cfg.feddat.schedule == "fused" and method.cfg.feddat.schedule == "fused"
    assert method.schedule(cfg) == "reference" and METHODS["feddat_lora"].passes_per_step(cfg) == (3, 2)
    with pytest.raises(ConfigError, match=r"feddat.branch_site = 1.*feddat.branch_site = 0"):
        make(tiny_backbone, "feddat_lora", **{"feddat.branch_site": 1})


def test_passes_per_step_has_one_shape_on_every_method():
    cfg = tiny_config()
    for name, cls in METHODS.items():
        fwd, bwd = cls.passes_per_step(cfg)
        assert isinstance(fwd, int) and isinstance(bwd, int), name
    assert METHODS["feddat"].passes_per_step(cfg) == (2, 2)
    assert METHODS["feddat"].passes_per_step(tiny_config(**{"feddat.schedule": "reference"})) == (3, 2)

def test_prompt_tuning_prepends_learned_tokens_and_trains_only_them(tiny_backbone, tiny_clients):
    cfg, model, method = make(tiny_backbone, "fedavg_prompt")
    view = method.model
    shared = method.init_shared()
    assert set(shared) == {"prompt"} and shared["prompt"].shape == (2, model.hidden_size)
    lengths = []
    handle = view.embedding.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1]))
    batch = tiny_clients[0].test.batch(torch.arange(4), CPU)
    with torch.no_grad():
        bare = model(*batch[:3])
        view.load_adapter("shared", shared)
        with view.active("shared"):
            prompted = view(*batch[:3])
    handle.remove()
    from feddat.backbones.base import trim_padding

    width = trim_padding(batch[1], batch[2])[0].shape[1]  # the backbone drops trailing padding columns
    assert lengths == [width, width + 2]  # P tokens more in the sequence
    assert not torch.allclose(prompted, bare)
    before = backbone_weights(model)
    update = first_update(method, tiny_clients[0])
    assert distance(update.shared, shared) > 0
    assert all(torch.equal(before[k], v) for k, v in backbone_weights(model).items())


def test_bitfit_trains_only_biases_and_full_trains_the_weights(tiny_backbone, tiny_clients):
    cfg, model, bitfit = make(tiny_backbone, "fedavg_bitfit")
    shared = bitfit.init_shared()
    assert shared and all(k.endswith("bias") for k in shared)
    update = first_update(bitfit, tiny_clients[0])
    assert distance(update.shared, shared) > 0
    weights = {k: v for k, v in backbone_weights(bitfit.model.base).items() if k.endswith("weight")}
    pristine = backbone_weights(model)
    assert all(torch.equal(pristine[k], v) for k, v in weights.items()), "BitFit moved a weight"
    full = build_method("fedavg_full", cfg, model, CPU)
    shared = full.init_shared()
    assert any(k.endswith("weight") and v.ndim == 2 for k, v in shared.items())
    n_block_params = sum(p.numel() for site in model.sites.values() for p in site.block.parameters())
    assert sum(v.numel() for v in shared.values()) == n_block_params
    update = first_update(full, tiny_clients[0])
    moved = [k for k in shared if k.endswith("weight") and not torch.equal(update.shared[k], shared[k])]
    assert moved, "full finetuning must move the weight matrices"
    assert all(torch.equal(pristine[k], v) for k, v in backbone_weights(model).items()), "the shared backbone was modified"


# ---- client drift and personalisation on the adapter ----------------------------------------


def trained(tiny_backbone, client, name, epochs=3, **baselines):
    """(received A_s, the client's update, the method) after one local update."""
    cfg, model, method = make(tiny_backbone, name, **{"train.local_epochs": epochs})
    for key, value in baselines.items():
        setattr(cfg.baselines, key, value)
    shared = method.init_shared()
    return shared, method.client_update(shared, method.init_client_state(client), client, round_=1), method


def drift(tiny_backbone, client, name, **baselines) -> float:
    shared, update, method = trained(tiny_backbone, client, name, **baselines)
    part = getattr(method, "model_part", lambda s: s)
    return distance(part(update.shared), part(shared))


def test_fedprox_proximal_term_keeps_the_adapter_near_the_global_one(tiny_backbone, tiny_clients):
    free = drift(tiny_backbone, tiny_clients[0], "fedprox", fedprox_mu=0.0)
    held = drift(tiny_backbone, tiny_clients[0], "fedprox", fedprox_mu=1e4)
    assert held < 0.5 * free


def test_scaffold_corrects_every_gradient_by_the_control_variates(tiny_backbone, tiny_clients):
    cfg, model, method = make(tiny_backbone, "scaffold")
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    adapter = method.model_part(shared)
    assert set(shared) == set(adapter) | {f"control.{k}" for k in adapter}  # c travels with A_s
    # A huge server control c dominates every corrected gradient g − c_i + c: all weights fall.
    pushed = {**adapter, **{f"control.{k}": v for k, v in constant_like(adapter, 1e3).items()}}
    update = method.client_update(pushed, state, client, round_=1)
    moved = method.model_part(update.shared)
    assert all(bool((moved[k] < adapter[k]).all()) for k in adapter)
    # c_i⁺ is the mean uncorrected gradient, uploaded as Δc_i = c_i⁺ − c_i and kept privately.
    kept = prefixed(update.state, "control")
    sent = prefixed(update.shared, "control")
    assert all(torch.allclose(sent[k], kept[k] - prefixed(state, "control")[k]) for k in adapter)
    assert all(kept[k].abs().max() < 1e2 for k in kept), "c_i must not include the correction"


def test_scaffold_server_moves_c_by_the_fraction_times_the_mean_delta(tiny_backbone):
    cfg, model, method = make(tiny_backbone, "scaffold", **{"federation.fraction": 0.5})
    shared = method.init_shared()
    ups = [ClientUpdate(n, {**constant_like(method.model_part(shared), x), **{k: torch.full_like(v, x) for k, v in shared.items() if k.startswith("control.")}}, 10, {}) for n, x in (("a", 1.0), ("b", 3.0))]
    out = method.aggregate(shared, ups)
    assert all(torch.allclose(v, torch.full_like(v, 2.0)) for k, v in method.model_part(out).items())
    assert all(torch.allclose(v, torch.full_like(v, 0.5 * 2.0)) for k, v in out.items() if k.startswith("control."))


def test_scaffold_and_feddyn_use_the_accepted_updates_over_the_federations_clients(tiny_backbone):
    """|S|/N is what was aggregated over N (Karimireddy et al. Alg. 1: c += Σ_S Δc_i / N; Acar et
    al. Alg. 1: h -= α/m Σ_P (θ_k − θ)), not federation.fraction: 0.5 of 5 clients samples 3."""
    from feddat.engines.rounds import Rounds

    cfg, model, method = make(tiny_backbone, "scaffold", **{"federation.fraction": 0.5})
    Rounds(method, cfg, num_clients=5)  # what an engine builds: it tells the method N
    assert method.num_clients == 5
    shared = method.init_shared()
    ups = [ClientUpdate(n, {**method.model_part(shared), **{k: torch.full_like(v, 1.0) for k, v in shared.items() if k.startswith("control.")}}, 10, {}) for n in "abc"]
    out = method.aggregate(shared, ups)
    assert all(torch.allclose(v, torch.full_like(v, 3 / 5)) for k, v in out.items() if k.startswith("control."))
    cfg, model, method = make(tiny_backbone, "feddyn", **{"federation.fraction": 0.5})
    Rounds(method, cfg, num_clients=5)
    alpha = cfg.baselines.feddyn_alpha
    shared = constant_like(method.init_shared(), 0.0)
    out = method.aggregate(shared, [ClientUpdate(n, constant_like(shared, 1.0), 5, {}) for n in "abc"])
    # h = −α·(3/5)·1;  θ = 1 − h/α = 1.6
    assert all(torch.allclose(v, torch.full_like(v, 1.6)) for v in out.values())


def test_feddyn_client_keeps_its_gradient_correction_and_follows_it(tiny_backbone, tiny_clients):
    cfg, model, method = make(tiny_backbone, "feddyn", **{"train.local_epochs": 2})
    cfg.baselines.feddyn_alpha = 0.5
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    # −⟨g_k, w⟩ in the loss: a large positive g_k pushes every weight up.
    state = {**state, **{f"dyn.{k}": v for k, v in constant_like(shared, 1e3).items()}}
    update = method.client_update(shared, state, client, round_=1)
    assert all(bool((update.shared[k] > shared[k]).all()) for k in shared)
    g_new = prefixed(update.state, "dyn")
    assert all(torch.allclose(g_new[k], 1e3 - 0.5 * (update.shared[k] - shared[k]), atol=1e-4) for k in shared)


def test_feddyn_server_subtracts_h_over_alpha_and_keeps_h_as_server_state(tiny_backbone):
    cfg, model, method = make(tiny_backbone, "feddyn")
    alpha = cfg.baselines.feddyn_alpha
    shared = constant_like(method.init_shared(), 0.0)
    out = method.aggregate(shared, [ClientUpdate("a", constant_like(shared, 1.0), 5, {})])
    # h = −α·1·(1 − 0) = −α;  θ = 1 − h/α = 2
    assert all(torch.allclose(v, torch.full_like(v, 2.0)) for v in out.values())
    saved = method.server_state()
    assert saved and all(torch.allclose(v, torch.full_like(v, -alpha)) for v in saved.values())
    fresh = build_method("feddyn", cfg, model, CPU)
    fresh.load_server_state(saved)
    again = [m.aggregate(out, [ClientUpdate("a", constant_like(shared, 2.0), 5, {})]) for m in (method, fresh)]
    assert all(torch.equal(again[0][k], again[1][k]) for k in out)


def test_moon_adds_the_model_contrastive_loss_on_the_pooled_representation(tiny_backbone, tiny_clients):
    from feddat.algorithms.moon import contrastive
    from feddat.losses import task_loss

    cfg, model, method = make(tiny_backbone, "moon", **{"train.batch_size": 64})
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    torch.manual_seed(1)
    prev = {k: v + 0.05 * torch.randn_like(v) for k, v in shared.items()}
    state = {**state, **{f"prev.{k}": v for k, v in prev.items()}}
    head = method.load_head(state, client)
    batch = client.train.batch(torch.randperm(len(client.train), generator=torch.Generator().manual_seed(0)), CPU)
    with torch.no_grad():
        reps = {}
        for name, adapter in (("z", shared), ("glob", shared), ("prev", prev)):
            model.load_adapter("shared", adapter)
            with model.active("shared"):
                reps[name] = model(*batch[:3])
        expected = task_loss(head(reps["z"]), batch[3]) + cfg.baselines.moon_mu * contrastive(reps["z"], reps["glob"], reps["prev"], cfg.baselines.moon_temperature)
    update = method.client_update(shared, state, client, round_=1)
    assert update.metrics["steps"] == 1
    assert update.metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert update.metrics["contrastive"] > 0
    assert distance(prefixed(update.state, "prev"), update.shared) == 0  # next round's z_prev


def test_contrastive_loss_prefers_the_global_representation():
    z = torch.randn(4, 8)
    assert contrastive_value(z, z, -z) < contrastive_value(z, -z, z)


def contrastive_value(z, glob, prev):
    from feddat.algorithms.moon import contrastive

    return float(contrastive(z, glob, prev, 0.5))


def test_ditto_personal_adapter_is_pulled_to_the_global_one_by_lambda(tiny_backbone, tiny_clients):
    def personal_drift(lam):
        shared, update, method = trained(tiny_backbone, tiny_clients[0], "ditto", ditto_lambda=lam)
        assert set(update.shared) == set(shared)  # only A_s travels
        assert distance(prefixed(update.state, "personal"), shared) > 0
        return distance(prefixed(update.state, "personal"), shared)

    assert personal_drift(1e4) < 0.5 * personal_drift(0.0)


def test_ditto_evaluates_the_personal_adapter(tiny_backbone, tiny_clients):
    shared, update, method = trained(tiny_backbone, tiny_clients[1], "ditto", epochs=1)
    scores = method.evaluate(update.shared, update.state, tiny_clients[1])
    assert set(scores) == {"global", "personal"}
    assert update.metrics["passes"] == 4 * update.metrics["steps"]  # a global and a personal step per batch


def test_fedrep_alternates_head_then_adapter(tiny_backbone, tiny_clients, monkeypatch):
    cfg, model, method = make(tiny_backbone, "fedrep")
    cfg.baselines.fedrep_head_epochs = 2
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    snaps = []
    make_optimizer = method.optimizer
    holder = {}

    def spying(params, *step_count, **schedule):
        opt = make_optimizer(params, *step_count, **schedule)
        opt.register_step_post_hook(lambda *_: snaps.append((model.adapter_state("shared"), {k: v.detach().clone() for k, v in holder["head"].state_dict().items()})))
        return opt

    real_load = method.load_head
    monkeypatch.setattr(method, "load_head", lambda s, c: holder.setdefault("head", real_load(s, c)))
    monkeypatch.setattr(method, "optimizer", spying)
    update = method.client_update(shared, state, client, round_=1)
    head0 = prefixed(state, "head")
    phases = []
    previous = (shared, head0)
    for adapter, head in snaps:
        phases.append(("head" if distance(head, previous[1]) > 0 else "") + ("adapter" if distance(adapter, previous[0]) > 0 else ""))
        previous = (adapter, head)
    assert phases == ["head"] * 4 + ["adapter"] * 2  # 2 head epochs then 1 adapter epoch, 2 batches each
    assert update.metrics["head_steps"] == 4 and update.metrics["steps"] == 2
    assert update.metrics["passes"] == 2 * 2 + 16 / 8  # adapter steps, plus one forward over the 16 examples


def test_fedrep_update_does_not_depend_on_what_the_process_drew_before(tiny_backbone, tiny_clients):
    """ViLT samples image patches from torch's RNG: the representation pass is seeded too."""
    cfg, model, method = make(tiny_backbone, "fedrep")
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    updates = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        updates.append(method.client_update(shared, state, client, round_=1))
    assert all(torch.equal(updates[0].shared[k], updates[1].shared[k]) for k in shared)
    assert all(torch.equal(updates[0].state[k], updates[1].state[k]) for k in updates[0].state)


def test_head_only_trains_the_head_on_the_bare_backbone_and_shares_nothing(tiny_backbone, tiny_clients, tmp_path, monkeypatch):
    cfg, model, method = make(tiny_backbone, "head_only")
    client = tiny_clients[0]
    state = method.init_client_state(client)
    before = backbone_weights(model)
    update = first_update(method, client)
    assert update.shared == {} and method.init_shared() == {}
    assert trainable_parameters(method, client) == sum(v.numel() for v in state.values())  # the head alone
    assert distance(prefixed(update.state, "head"), prefixed(state, "head")) > 0
    assert all(torch.equal(before[k], v) for k, v in backbone_weights(model).items())
    # it trains and evaluates on the bare backbone, even when an adapter is left active
    model.add_adapter("shared", trainable=True)
    seen = []
    real_logits = method.logits
    monkeypatch.setattr(method, "logits", lambda head, batch: seen.append({s.active for s in model.ordered_sites()}) or real_logits(head, batch))
    with model.active("shared"):
        first_update(method, client)
        method.evaluate({}, update.state, client)
    assert seen and all(active == {()} for active in seen)
    summary = run_method("head_only", cfg, model, tiny_clients[:1], tmp_path, CPU, log=lambda s: None)
    assert summary["shared_params"] == 0 and summary["bytes_up_per_round"] == 0 and summary["local_steps"] > 0


# ---- server optimisers ----------------------------------------------------------------------


def test_fedavgm_applies_server_momentum(tiny_backbone):
    cfg, model, method = make(tiny_backbone, "fedavgm")
    x0 = constant_like(method.init_shared(), 0.0)
    x1 = method.aggregate(x0, [ClientUpdate("a", constant_like(x0, 1.0), 5, {})])
    assert all(torch.allclose(v, torch.full_like(v, 1.0)) for v in x1.values())  # v = Δ = 1
    x2 = method.aggregate(x1, [ClientUpdate("a", constant_like(x0, 2.0), 5, {})])
    assert all(torch.allclose(v, torch.full_like(v, 1.0 + 0.9 + 1.0)) for v in x2.values())  # v = 0.9·1 + 1


def test_fedadam_takes_an_adam_step_on_the_pseudo_gradient(tiny_backbone):
    cfg, model, method = make(tiny_backbone, "fedadam")
    s = cfg.server
    x0 = constant_like(method.init_shared(), 0.0)
    x1 = method.aggregate(x0, [ClientUpdate("a", constant_like(x0, 0.5), 5, {}), ClientUpdate("b", constant_like(x0, 0.5), 5, {})])
    m, v = (1 - s.beta1) * 0.5, (1 - s.beta2) * 0.25
    expected = s.adam_lr * m / (v**0.5 + s.tau)
    assert all(torch.allclose(t, torch.full_like(t, expected), rtol=1e-5) for t in x1.values())
    assert set(method.server_state()) == {f"{p}.{k}" for p in ("m", "v") for k in x0}
