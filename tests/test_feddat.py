"""FedDAT semantics (docs/design.md §4): what moves in each step, what stays, what travels."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import tiny_config
from feddat.algorithms import build_method
from feddat.algorithms.base import ClientUpdate, UpdateRejected
from feddat.algorithms.feddat.step import Optimizers, dat_loss, fused_step, student_loss
from feddat.losses import distill, task_loss
from feddat.peft.model import AdaptedModel


def snapshot(model: AdaptedModel, head=None) -> dict[str, dict[str, torch.Tensor]]:
    snap = {name: model.adapter_state(name) for name in model.adapter_names()}
    if head is not None:
        snap["head"] = {k: v.detach().clone() for k, v in head.state_dict().items()}
    return snap


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def make(tiny_backbone, **overrides):
    cfg = tiny_config(**overrides)
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    return cfg, model, build_method("feddat", cfg, model, torch.device("cpu"))


ORDER = {
    # reference: student step (A_s, head), then DAT step (A_c, head), per batch
    "reference": ["shared", "head", "client", "head"],
    # fused: both head steps first (same order of losses), then A_s and A_c from one backward
    "fused": ["head", "head", "shared", "client"],
}


@pytest.mark.parametrize("schedule", ["reference", "fused"])
def test_each_step_moves_only_its_own_parameters(tiny_backbone, tiny_clients, monkeypatch, schedule):
    cfg, model, method = make(tiny_backbone, **{"feddat.schedule": schedule})
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    steps: list[tuple[str, dict]] = []
    make_optimizer = method.optimizer
    head = method.load_client(shared, state, client)
    monkeypatch.setattr(method, "load_client", lambda *a: head)

    def role_of(params) -> str:
        for name in ("shared", "client"):
            if any(p is q for p in params for q in model.adapter_parameters(name)):
                return name
        return "head"

    def spying_optimizer(params, *step_count, **schedule):
        params = list(params)
        opt = make_optimizer(params, *step_count, **schedule)
        role = role_of(params)
        opt.register_step_post_hook(lambda *_: steps.append((role, snapshot(model, head))))
        return opt

    monkeypatch.setattr(method, "optimizer", spying_optimizer)
    method.client_update(shared, state, client, round_=1)
    roles = [r for r, _ in steps]
    assert roles == ORDER[schedule] * 2  # 16 examples, batch 8
    first = {"shared": shared, "frozen": shared, "client": {k[7:]: v for k, v in state.items() if k.startswith("client.")}}
    before = {**first, "head": {k[5:]: v for k, v in state.items() if k.startswith("head.")}}
    for role, after in steps:
        assert not changed(before["frozen"], after["frozen"]), "Â_s must never move"
        for part in ("shared", "client", "head"):
            assert changed(before[part], after[part]) == (part == role), f"{role} step moved {part}"
        before = after
    assert all(torch.equal(steps[-1][1]["frozen"][k], shared[k]) for k in shared)


@pytest.mark.parametrize("kd, teacher", [("mutual", "dual"), ("one_way", "dual"), ("none", "client_only"), ("mutual", "frozen_only")])
def test_fused_schedule_equals_the_reference(tiny_backbone, tiny_clients, kd, teacher):
    """Same losses and the same parameters after a local update, to float tolerance."""
    results = {}
    for schedule in ("reference", "fused"):
        cfg, model, method = make(tiny_backbone, **{"feddat.schedule": schedule, "feddat.kd": kd, "feddat.teacher": teacher})
        client = tiny_clients[1]
        update = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
        results[schedule] = update
    ref, fused = results["reference"], results["fused"]
    for key in ref.metrics:
        assert fused.metrics[key] == pytest.approx(ref.metrics[key], rel=1e-4, abs=1e-6), key
    for part, tensors in (("shared", ref.shared), ("state", ref.state)):
        other = fused.shared if part == "shared" else fused.state
        for k, v in tensors.items():
            torch.testing.assert_close(other[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{part} {k}: {m}")


def test_update_shares_only_the_shared_adapter_and_keeps_client_state(tiny_backbone, tiny_clients):
    cfg, model, method = make(tiny_backbone)
    client = tiny_clients[1]
    shared, state = method.init_shared(), method.init_client_state(client)
    update = method.client_update(shared, state, client, round_=1)
    assert set(update.shared) == set(shared)  # A_s only: no head, no A_c, no frozen copy
    assert {k.split(".")[0] for k in update.state} == {"head", "client"}
    # round 2 starts from the A_c the client kept, not from a fresh one
    method.client_update(method.aggregate(shared, [update]), update.state, client, round_=2)
    kept = {k[7:]: v for k, v in update.state.items() if k.startswith("client.")}
    method.load_client(shared, update.state, client)
    assert not changed(kept, model.adapter_state("client"))


def test_student_loss_is_ce_plus_alpha_t2_kl_from_the_detached_dat(tiny_backbone, tiny_clients):
    cfg, model, method = make(tiny_backbone, **{"train.batch_size": 64, "feddat.alpha": 0.7, "feddat.temperature": 2.0})
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    head = method.load_client(shared, state, client)
    batch = client.train.batch(torch.randperm(len(client.train), generator=torch.Generator().manual_seed(0)), torch.device("cpu"))
    with torch.no_grad():
        with model.active("frozen", "client"):
            z_dat = head(model(*batch[:3]))
        with model.active("shared"):
            z_s = head(model(*batch[:3]))
    expected = task_loss(z_s, batch[3]) + 0.7 * distill(z_s, z_dat, 2.0)
    update = method.client_update(shared, state, client, round_=1)
    assert update.metrics["steps"] == 1
    assert update.metrics["loss_student"] == pytest.approx(float(expected), rel=1e-5)


def test_distillation_teacher_is_detached():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    distill(student, teacher, 3.0).backward()
    assert teacher.grad is None and student.grad is not None
    assert float(distill(teacher, teacher, 3.0).detach()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "kd, expect_kd_student, expect_kd_dat",
    [("mutual", True, True), ("one_way", True, False), ("none", False, False)],
)
def test_kd_switches(tiny_backbone, tiny_clients, kd, expect_kd_student, expect_kd_dat):
    cfg, model, method = make(tiny_backbone, **{"feddat.kd": kd})
    client = tiny_clients[2]
    update = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    assert (update.metrics["kd_student"] > 0) == expect_kd_student
    assert (update.metrics["kd_dat"] > 0) == expect_kd_dat


@pytest.mark.parametrize("teacher, moves_client", [("client_only", True), ("frozen_only", False)])
def test_teacher_ablations(tiny_backbone, tiny_clients, teacher, moves_client):
    cfg, model, method = make(tiny_backbone, **{"feddat.teacher": teacher})
    client = tiny_clients[0]
    state = method.init_client_state(client)
    update = method.client_update(method.init_shared(), state, client, round_=1)
    client_keys = [k for k in state if k.startswith("client.")]
    assert any(not torch.equal(state[k], update.state[k]) for k in client_keys) == moves_client
    scores = method.evaluate(update.shared, update.state, client)
    assert set(scores) == {"global", "personal"}


def test_aggregation_is_the_data_size_weighted_mean(tiny_backbone):
    cfg, model, method = make(tiny_backbone)
    shared = method.init_shared()
    a = {k: torch.ones_like(v) for k, v in shared.items()}
    b = {k: torch.full_like(v, 4.0) for k, v in shared.items()}
    updates = [ClientUpdate("a", a, 30, {}), ClientUpdate("b", b, 10, {})]
    out = method.aggregate(shared, updates)
    assert all(torch.allclose(v, torch.full_like(v, 1.75)) for v in out.values())
    cfg.federation.weighting = "uniform"
    out = method.aggregate(shared, updates)
    assert all(torch.allclose(v, torch.full_like(v, 2.5)) for v in out.values())


def test_aggregation_rejects_bad_updates_naming_the_client(tiny_backbone):
    cfg, model, method = make(tiny_backbone)
    shared = method.init_shared()
    key = next(iter(shared))
    nan = dict(shared, **{key: torch.full_like(shared[key], float("nan"))})
    with pytest.raises(UpdateRejected, match="client 'mallory'.*NaN"):
        method.aggregate(shared, [ClientUpdate("mallory", nan, 5, {})])
    wrong = dict(shared, **{key: torch.zeros(3)})
    with pytest.raises(UpdateRejected, match="client 'eve'.*shape"):
        method.aggregate(shared, [ClientUpdate("eve", wrong, 5, {})])


def test_branched_teacher_shares_the_students_lower_sites_and_trains_nothing_there(tiny_backbone, tiny_clients):
    """feddat.branch_site = 1: below site 1 the teacher is the student's A_s stream (detached for
    the teacher's loss) and has no A_c; each optimiser sees exactly its own loss's gradient."""
    cfg, model, method = make(tiny_backbone, **{"feddat.branch_site": 1, "train.batch_size": 64})
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    head = method.load_client(shared, state, client)
    head.requires_grad_(False)  # a fixed head: the expected gradients below need no head steps
    batch = client.train.batch(torch.arange(len(client.train)), torch.device("cpu"))
    path = {"below": ("shared",), "branch": 1}

    def grads(names, *, active, loss_of):
        params = [p for n in names for p in model.adapter_parameters(n)]
        torch.manual_seed(7)  # ViLT samples image patches from the global RNG in forward
        with model.active(*active, **({} if active == ("shared",) else path)):
            z = method.logits(head, batch)
        return z, torch.autograd.grad(loss_of(z), params, allow_unused=True)

    with torch.no_grad(), model.active("frozen", "client", **path):
        torch.manual_seed(7)
        z_dat = method.logits(head, batch)
    z_s, g_shared = grads(["shared"], active=("shared",), loss_of=lambda z: student_loss(cfg.feddat, z, z_dat, batch[3])[0])
    _, g_client = grads(["client"], active=("frozen", "client"), loss_of=lambda z: dat_loss(cfg.feddat, z, z_s.detach(), batch[3])[0])

    sgd = lambda params: torch.optim.SGD(list(params), lr=1.0)  # noqa: E731  -- Δp = -grad

    opts = Optimizers(sgd(model.adapter_parameters("shared")), sgd(head.parameters()), sgd(model.adapter_parameters("client")), sgd(head.parameters()))
    before = snapshot(model)
    torch.manual_seed(7)
    fused_step(method, batch, head, opts)
    after = snapshot(model)
    for name, expected in (("shared", g_shared), ("client", g_client)):
        keys = list(before[name])
        for key, g in zip(keys, expected):
            delta = before[name][key] - after[name][key]
            if g is None:  # A_c below the branch: not on the teacher's path, never moves
                assert key.startswith("0.") and name == "client" and torch.equal(delta, torch.zeros_like(delta))
            else:
                torch.testing.assert_close(delta, g, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name} {key}: {m}")
    assert any(k.startswith("0.") for k in before["shared"]) and changed(
        {k: v for k, v in before["shared"].items() if k.startswith("0.")}, after["shared"]
    ), "A_s below the branch still learns from the student's loss"

    # Evaluation follows the same path: A_c below the branch plays no part in the personal score.
    state = {**state, **{k: v + 5.0 for k, v in state.items() if k.startswith("client.0.")}}
    assert method.evaluate(shared, state, client)["personal"] == method.evaluate(
        shared, {**state, **{k: torch.zeros_like(v) for k, v in state.items() if k.startswith("client.0.")}}, client
    )["personal"]


def test_branch_site_is_refused_where_it_cannot_apply(tiny_backbone):
    from feddat.config import ConfigError, validate

    with pytest.raises(ConfigError, match="variant of the fused schedule"):
        validate(tiny_config(**{"feddat.branch_site": 1, "feddat.schedule": "reference"}))
    with pytest.raises(ConfigError, match="variant of the fused schedule"):  # a config built in Python, never validated
        make(tiny_backbone, **{"feddat.branch_site": 1, "feddat.schedule": "reference"})
    with pytest.raises(ConfigError, match="has 2 adapter sites"):
        make(tiny_backbone, **{"feddat.branch_site": 2})


# ---- the reference code's behaviour, opt-in (docs/differences.md)


def test_reference_lr_schedule_warms_up_then_decays_linearly():
    """transformers' get_polynomial_decay_schedule_with_warmup(power=1, lr_end=0) with
    num_warmup_steps = int(0.1 * total), as the reference code builds it for every local update."""
    from feddat.algorithms.base import warmup_decay_factor as reference_lr_factor

    factors = [reference_lr_factor(step, 20, 0.1) for step in range(21)]
    assert factors[:4] == [0.0, 0.5, 1.0, 17 / 18]
    assert factors[-2:] == [1 / 18, 0.0]
    assert [reference_lr_factor(step, 4, 0.1) for step in range(4)] == [1.0, 0.75, 0.5, 0.25]  # int(0.4) = 0: no warm-up


@pytest.mark.parametrize("method_name", ["feddat", "fedavg"])
def test_reference_lr_schedule_is_rebuilt_for_every_local_update(tiny_backbone, tiny_clients, method_name):
    """Every optimiser of a local update starts the schedule again: with 2 steps per update the
    learning rates are lr·[1, 0.5] in round 1 and again in round 2 (constant: lr·[1, 1])."""
    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    try:
        for schedule in ("warmup_decay", "constant"):
            cfg = tiny_config(**{"train.lr_schedule": schedule})
            method = build_method(method_name, cfg, AdaptedModel(tiny_backbone, reduction_factor=4), torch.device("cpu"))
            client = tiny_clients[0]  # 16 examples, batch 8, one epoch: 2 steps
            shared, state = method.init_shared(), method.init_client_state(client)
            for round_ in (1, 2):
                update = method.client_update(shared, state, client, round_)
                shared, state = method.aggregate(shared, [update]), update.state
    finally:
        hook.remove()
    per_update = 4 if method_name == "feddat" else 1  # FedDAT steps four optimisers per minibatch
    lr = cfg.train.lr
    ref_round = [lr] * per_update + [0.5 * lr] * per_update
    assert seen == ref_round * 2 + [lr] * (4 * per_update)


def test_loss_scale_one_half_is_the_reference_codes_loss(tiny_backbone, tiny_clients):
    """The reference's L = ½(CE + T²·KL) for the student and the teacher: with one minibatch, the
    logged losses are exactly half of docs/design.md §4's, and the first AdamW step (sign-like) is unchanged."""
    updates = {}
    for scale in (1.0, 0.5):
        cfg, model, method = make(tiny_backbone, **{"train.batch_size": 64, "feddat.loss_scale": scale, "feddat.schedule": "reference"})
        client = tiny_clients[0]
        updates[scale] = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    design, reference = updates[1.0], updates[0.5]
    assert reference.metrics["loss_student"] == pytest.approx(0.5 * design.metrics["loss_student"], rel=1e-6)
    assert reference.metrics["loss_dat"] == pytest.approx(0.5 * design.metrics["loss_dat"], rel=1e-6)
    assert reference.metrics["kd_student"] == pytest.approx(design.metrics["kd_student"], rel=1e-6)  # the KD term itself is unscaled


def test_design_defaults_stay_the_defaults():
    from feddat.config import Config

    cfg = Config()
    assert (cfg.train.lr_schedule, cfg.feddat.loss_scale, cfg.feddat.alpha, cfg.feddat.beta) == ("constant", 1.0, 1.0, 1.0)
