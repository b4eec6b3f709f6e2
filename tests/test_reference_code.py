"""The released FedDAT code's behaviours, each one switch (docs/differences.md),
pinned to their definitions: its learning-rate schedule against transformers'
own, its single AdamW against AdamW's update rule, the A_c freeze, one A_c draw for every client,
the head's decayed LayerNorm, BCE for every task; and the shipped config that sets them all."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from conftest import tiny_config
from feddat import config as config_mod
from feddat.algorithms import build_method
from feddat.config import ConfigError
from feddat.losses import task_loss
from feddat.peft.model import AdaptedModel

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CONFIG = ROOT / "configs" / "reference-code.toml"


def build(name, tiny_backbone, **overrides):
    cfg = tiny_config(**overrides)
    return build_method(name, cfg, AdaptedModel(tiny_backbone, reduction_factor=4), torch.device("cpu"))


def transformers_lrs(lr: float, horizon: int, ticks: int, warmup_fraction: float = 0.1) -> list[float]:
    """The lr before each of the first `ticks` steps of the released code's scheduler:
    transformers' get_polynomial_decay_schedule_with_warmup exactly as task_trainer.py builds it."""
    from transformers import get_polynomial_decay_schedule_with_warmup

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_polynomial_decay_schedule_with_warmup(opt, num_warmup_steps=int(horizon * warmup_fraction), num_training_steps=horizon, lr_end=0, power=1)
    out = []
    for _ in range(ticks):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def lrs_by_optimizer(method, client, rounds=(1,)) -> list[list[tuple[int, float]]]:
    """Per local update: (optimiser id, lr) before every optimiser step, in order."""
    seen: list[tuple[int, float]] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append((id(opt), opt.param_groups[0]["lr"])))
    per_update = []
    try:
        shared, state = method.init_shared(), method.init_client_state(client)
        for round_ in rounds:
            seen.clear()
            update = method.client_update(shared, state, client, round_)
            shared, state = method.aggregate(shared, [update]), update.state
            per_update.append(list(seen))
    finally:
        hook.remove()
    return per_update


# ---- train.lr_schedule = official ---------------------------------------------------------


def test_official_schedule_fedavg_steps_once_per_minibatch_and_never_leaves_warm_up(tiny_backbone, tiny_clients):
    """16 examples at batch 2: 8 minibatches per epoch, a horizon of 15 epochs (120 ticks, 12 of
    warm-up). FedAvg ticks once per minibatch, so its lr climbs lr·0/12 … lr·7/12 and is rebuilt
    the same in round 2."""
    method = build("fedavg", tiny_backbone, **{"train.lr_schedule": "official", "train.batch_size": 2})
    lr = method.cfg.train.lr
    rounds = lrs_by_optimizer(method, tiny_clients[0], rounds=(1, 2))
    expected = transformers_lrs(lr, horizon=8 * 15, ticks=8)
    for seen in rounds:
        assert [v for _, v in seen] == pytest.approx(expected, rel=1e-12)
    assert max(expected) < lr


def test_official_schedule_ticks_twice_per_feddat_minibatch(tiny_backbone, tiny_clients):
    """FedDAT (separate optimisers): the student side (A_s, head) steps at ticks 0, 2, 4, …, the
    DAT side (A_c, head) at 1, 3, 5, …, so in 8 minibatches the schedule runs 16 ticks of the same
    120-tick horizon and passes the end of warm-up (tick 12), where FedAvg's 8 ticks cannot."""
    for schedule in ("fused", "reference"):
        method = build("feddat", tiny_backbone, **{"train.lr_schedule": "official", "train.batch_size": 2, "feddat.schedule": schedule})
        (seen,) = lrs_by_optimizer(method, tiny_clients[0])
        lr = method.cfg.train.lr
        ticks = transformers_lrs(lr, horizon=120, ticks=16)
        by_opt: dict[int, list[float]] = {}
        for opt, value in seen:
            by_opt.setdefault(opt, []).append(value)
        assert len(by_opt) == 4  # A_s, the student's head state, A_c, the DAT's head state
        student_side = [v for v in by_opt.values() if v == pytest.approx(ticks[0::2], rel=1e-12)]
        dat_side = [v for v in by_opt.values() if v == pytest.approx(ticks[1::2], rel=1e-12)]
        assert len(student_side) == 2 and len(dat_side) == 2, schedule
    assert ticks[12] == lr and ticks[15] == pytest.approx(lr * (120 - 15) / 108)


def test_official_schedule_single_optimizer_ticks_at_every_step(tiny_backbone, tiny_clients):
    method = build("feddat", tiny_backbone, **{"train.lr_schedule": "official", "train.batch_size": 2, "feddat.optimizer": "single"})
    (seen,) = lrs_by_optimizer(method, tiny_clients[0])
    assert len({opt for opt, _ in seen}) == 1
    assert [v for _, v in seen] == pytest.approx(transformers_lrs(method.cfg.train.lr, horizon=120, ticks=16), rel=1e-12)


def test_warmup_decay_schedule_is_the_old_reference_one_and_the_old_name_is_refused(tmp_path):
    cfg = config_mod.load(None, {"train.lr_schedule": "warmup_decay"})
    assert cfg.train.lr_schedule == "warmup_decay"
    with pytest.raises(ConfigError, match=r"earlier name of 'warmup_decay'.*'official' for the released code's"):
        config_mod.load(None, {"train.lr_schedule": "reference"})
    with pytest.raises(ConfigError, match=r"train.schedule_epochs must be positive, got 0"):
        config_mod.load(None, {"train.schedule_epochs": "0"})


# ---- feddat.optimizer = single --------------------------------------------------------------


def adamw_zero_grad_step(p: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
    """AdamW's update (Loshchilov & Hutter; torch.optim.AdamW) of `p` with a zero gradient: only
    weight decay and the moments' momentum move it."""
    beta1, beta2 = group["betas"]
    step = float(state["step"]) + 1
    m, v = beta1 * state["exp_avg"], beta2 * state["exp_avg_sq"]
    p = p * (1 - group["lr"] * group["weight_decay"])
    denom = v.sqrt() / (1 - beta2**step) ** 0.5 + group["eps"]
    return p - group["lr"] / (1 - beta1**step) * m / denom


def test_single_optimizer_moves_the_other_adapter_by_momentum_and_decay(tiny_backbone, tiny_clients):
    """One AdamW over A_s, A_c and the head, stepped after the student's loss and after the DAT's,
    gradients zeroed (not None): A_c cannot move in the very first step (no gradient yet), but
    from the second minibatch on every student step moves it by exactly AdamW's zero-gradient
    update, and every DAT step moves A_s the same way."""
    method = build("feddat", tiny_backbone, **{"train.batch_size": 4, "feddat.optimizer": "single"})
    model, client = method.model, tiny_clients[0]
    before: list[tuple[dict, dict]] = []
    after: list[dict] = []

    def params_of(name):
        return {id(p): p for p in model.adapter_parameters(name)}

    held: list[set[int]] = []

    def pre(opt, *_):
        shared, own = params_of("shared"), params_of("client")
        held.append({id(p) for g in opt.param_groups for p in g["params"]})
        snap = {"shared": {}, "client": {}}
        for group in opt.param_groups:
            for p in group["params"]:
                part = "shared" if id(p) in shared else "client" if id(p) in own else None
                if part:
                    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state.get(p, {}).items()}
                    snap[part][id(p)] = (p.detach().clone(), state, dict(group), p.grad is None)
        before.append((snap, {}))

    def post(opt, *_):
        after.append({part: {id(p): p.detach().clone() for p in model.adapter_parameters(part)} for part in ("shared", "client")})

    hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    finally:
        for h in hooks:
            h.remove()
    assert len(after) == 8  # 16 examples, batch 4: 4 minibatches, two steps each
    every = set(params_of("shared")) | set(params_of("client"))
    assert all(every <= ids and len(ids) > len(every) for ids in held)  # A_s, A_c and the head in one optimiser
    assert all(before[k][0][part] for k in range(8) for part in ("shared", "client"))
    # step 0 (first student step): A_c has no gradient yet and stays where it was
    assert all(torch.equal(after[0]["client"][i], p) for i, (p, _, _, _) in before[0][0]["client"].items())
    checked = 0
    for k in range(2, 8):
        untouched = "client" if k % 2 == 0 else "shared"  # student steps leave A_c's gradient zero, DAT steps A_s's
        for i, (p, state, group, no_grad) in before[k][0][untouched].items():
            assert not no_grad
            expected = adamw_zero_grad_step(p, state, group)
            assert torch.allclose(after[k][untouched][i], expected, rtol=1e-6, atol=1e-9)
            assert not torch.equal(after[k][untouched][i], p)  # it did move
            checked += 1
    assert checked > 0


def test_separate_optimizers_never_move_the_untouched_adapter(tiny_backbone, tiny_clients):
    """docs/design.md §4's default, for contrast: the same run with separate optimisers leaves A_c where
    it was through every student step (tests/test_feddat.py checks every part of every step)."""
    method = build("feddat", tiny_backbone, **{"train.batch_size": 4, "feddat.schedule": "reference"})
    model, client = method.model, tiny_clients[0]
    shots = []
    hook = register_optimizer_step_post_hook(lambda *_: shots.append(model.adapter_state("client")))
    try:
        method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    finally:
        hook.remove()
    # 4 optimisers per minibatch (A_s, head, A_c, head): A_c moves only at its own step
    moved = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(shots, shots[1:])]
    assert moved == [i % 4 == 1 for i in range(len(moved))]


def test_single_optimizer_runs_the_reference_schedule(tiny_backbone):
    cfg = tiny_config(**{"feddat.optimizer": "single"})
    from feddat.algorithms.feddat.method import FedDAT

    assert FedDAT.schedule(cfg) == "reference" and FedDAT.passes_per_step(cfg) == (3, 2)
    with pytest.raises(ConfigError, match="single runs the reference schedule"):
        config_mod.load(None, {"feddat.optimizer": "single", "feddat.branch_site": "1"})


# ---- feddat.client_adapter_rounds, feddat.client_init ---------------------------------------


@pytest.mark.parametrize("rounds, moves_in_round_2", [(1, False), (0, True), (2, True)])
def test_client_adapter_rounds_freezes_a_c_after_them(tiny_backbone, tiny_clients, rounds, moves_in_round_2):
    """With feddat.client_adapter_rounds = 1, A_c trains in round 1 and is bit-identical after
    round 2, while A_s and the head still move (the DAT loss still trains the head)."""
    method = build("feddat", tiny_backbone, **{"feddat.client_adapter_rounds": rounds})
    client = tiny_clients[0]
    shared, state0 = method.init_shared(), method.init_client_state(client)
    u1 = method.client_update(shared, state0, client, round_=1)
    u2 = method.client_update(method.aggregate(shared, [u1]), u1.state, client, round_=2)
    client_keys = [k for k in state0 if k.startswith("client.")]
    head_keys = [k for k in state0 if k.startswith("head.")]
    assert any(not torch.equal(state0[k], u1.state[k]) for k in client_keys)  # round 1: A_c trains
    assert any(not torch.equal(u1.state[k], u2.state[k]) for k in client_keys) == moves_in_round_2
    assert any(not torch.equal(u1.state[k], u2.state[k]) for k in head_keys)
    assert any(not torch.equal(u1.shared[k], u2.shared[k]) for k in u1.shared)


def test_client_init_same_draws_one_a_c_for_every_client(tiny_backbone, tiny_clients):
    def client_adapters(init):
        method = build("feddat", tiny_backbone, **{"feddat.client_init": init})
        return [{k: v for k, v in method.init_client_state(c).items() if k.startswith("client.")} for c in tiny_clients]

    same, own = client_adapters("same"), client_adapters("per_client")
    assert all(torch.equal(same[0][k], s[k]) for s in same[1:] for k in s)
    assert any(not torch.equal(own[0][k], own[1][k]) for k in own[0])


# ---- train.decay_head_norm, train.task_loss -------------------------------------------------


@pytest.mark.parametrize("flag", [False, True])
def test_decay_head_norm_decays_only_the_heads_layernorm_weight(tiny_backbone, tiny_clients, flag):
    """As the released code's name filter: with the flag the head's LayerNorm weight is decayed;
    biases never; the backbone's own LayerNorm weights (which full finetuning trains, named
    'LayerNorm.weight' in ViLT) never."""
    method = build("fedavg", tiny_backbone, **{"train.decay_head_norm": flag})
    head = method.new_head(tiny_clients[0])
    opt = method.optimizer([*tiny_backbone.parameters(), *head.parameters()], steps=1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    norm, bias = head[1].weight, head[1].bias
    assert (id(norm) in decayed) == flag
    assert id(bias) not in decayed and id(head[0].weight) in decayed
    body_norms = [m.weight for m in tiny_backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert body_norms and not any(id(p) in decayed for p in body_norms)
    # the mark survives a head rebuilt from a client's state (every local update loads one)
    state = method.init_client_state(tiny_clients[0])
    assert method.load_head(state, tiny_clients[0])[1].weight.head_norm


def test_bce_task_loss_is_bce_with_logits_on_one_hot_targets_times_the_answers():
    """The released code's loss for every task: nn.BCEWithLogitsLoss(reduction='mean')(logits,
    target) * target.shape[1]; on class indices the target is their one-hot vector."""
    torch.manual_seed(0)
    logits, y = torch.randn(5, 7), torch.tensor([0, 3, 6, 2, 2])
    one_hot = torch.zeros(5, 7)
    one_hot[torch.arange(5), y] = 1.0
    official = torch.nn.BCEWithLogitsLoss(reduction="mean")(logits, one_hot) * 7
    assert task_loss(logits, y, "bce") == pytest.approx(float(official), rel=1e-6)
    assert task_loss(logits, y) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    soft = torch.rand(5, 7)
    assert task_loss(logits, soft, "bce") == task_loss(logits, soft)  # soft VQA scores: BCE either way


def test_methods_train_with_the_configured_task_loss(tiny_backbone, tiny_clients):
    """train.task_loss reaches every method's loss: FedAvg's logged loss is the BCE of its first
    minibatch when it runs a single one."""
    client = tiny_clients[0]
    losses = {}
    for kind in ("auto", "bce"):
        method = build("fedavg", tiny_backbone, **{"train.task_loss": kind, "train.batch_size": 64})
        shared, state = method.init_shared(), method.init_client_state(client)
        head = method.load_head(state, client)
        method.model.load_adapter("shared", shared)
        with torch.no_grad(), method.model.active("shared"):
            batch = client.train.batch(torch.arange(len(client.train)), torch.device("cpu"))
            method.seed_forward("train", method.name, 1, client.name)
            expected = task_loss(method.logits(head, batch), batch.targets, kind)
        losses[kind] = (method.client_update(shared, state, client, round_=1).metrics["loss"], float(expected))
    for kind, (logged, expected) in losses.items():
        assert logged == pytest.approx(expected, rel=1e-5), kind
    assert losses["auto"][0] != pytest.approx(losses["bce"][0], rel=1e-3)


# ---- configs/reference-code.toml ------------------------------------------------------------


def test_reference_code_config_sets_every_switch_and_cites_its_source():
    cfg = config_mod.load(REFERENCE_CONFIG)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.local_epochs) == (1e-4, 2, 1)
    assert (cfg.train.lr_schedule, cfg.train.schedule_epochs, cfg.train.warmup_fraction) == ("official", 15, 0.1)
    assert (cfg.train.decay_head_norm, cfg.train.task_loss) == (True, "bce")
    assert (cfg.feddat.optimizer, cfg.feddat.client_adapter_rounds, cfg.feddat.client_init, cfg.feddat.loss_scale) == ("single", 1, "same", 0.5)
    assert cfg.feddat.personal_frozen == "received"
    assert (cfg.federation.weighting, cfg.federation.fraction) == ("uniform", 1.0)
    assert (cfg.feddat.alpha, cfg.feddat.beta, cfg.feddat.temperature) == (1.0, 1.0, 3.0)
    # every value line says which file of the released code it reproduces
    for line in REFERENCE_CONFIG.read_text().splitlines():
        if re.match(r"^\s*\w+\s*=", line):
            assert re.search(r"#.*src/[\w/]+\.(py|sh)", line), f"no source cited: {line!r}"
    with REFERENCE_CONFIG.open("rb") as f:
        assert tomllib.load(f)  # plain TOML


def test_design_defaults_are_unchanged():
    cfg = config_mod.Config()
    assert (cfg.train.lr_schedule, cfg.train.decay_head_norm, cfg.train.task_loss) == ("constant", False, "auto")
    assert (cfg.feddat.optimizer, cfg.feddat.client_adapter_rounds, cfg.feddat.client_init, cfg.feddat.personal_frozen) == ("separate", 0, "per_client", "current")


# ---- feddat.personal_frozen ------------------------------------------------------------------


def test_personal_frozen_received_scores_the_teacher_with_the_round_start_a_s(tiny_backbone, tiny_clients):
    """The released code evaluates its personal view with the Â_s a client received at the start
    of its last round: the client keeps it, the evaluation and predict's deployment use it, and
    the personal score equals docs/design.md §4's evaluation run with that A_s as the current one."""
    from feddat.inference import deployment

    client = tiny_clients[0]
    received = build("feddat", tiny_backbone, **{"feddat.personal_frozen": "received"})
    shared0, state0 = received.init_shared(), received.init_client_state(client)
    update = received.client_update(shared0, state0, client, round_=1)
    new_shared = received.aggregate(shared0, [update])
    kept = {k[7:]: v for k, v in update.state.items() if k.startswith("frozen.")}
    assert kept.keys() == shared0.keys() and all(torch.equal(kept[k], shared0[k]) for k in kept)
    assert any(not torch.equal(new_shared[k], shared0[k]) for k in kept)

    current = build("feddat", tiny_backbone)
    design_state = {k: v for k, v in update.state.items() if not k.startswith("frozen.")}
    scores = received.evaluate(new_shared, update.state, client)
    evaluated = received.model.adapter_state("frozen")  # what the personal view just ran with
    assert all(torch.equal(evaluated[k], shared0[k]) for k in shared0)
    assert scores["personal"] == current.evaluate(shared0, design_state, client)["personal"]
    assert all(torch.equal(current.model.adapter_state("frozen")[k], shared0[k]) for k in shared0)
    current.evaluate(new_shared, update.state, client)  # docs/design.md §4's view ignores a kept copy
    assert all(torch.equal(current.model.adapter_state("frozen")[k], new_shared[k]) for k in new_shared)
    assert scores["global"] == current.evaluate(new_shared, design_state, client)["global"]
    info = {"name": client.name, "answers": list(client.answers), "images_per_example": 1}
    sets = deployment(received.cfg, "feddat", info, "personal", new_shared, update.state).sets
    assert all(torch.equal(sets["frozen"][k], shared0[k]) for k in shared0)
    sets = deployment(current.cfg, "feddat", info, "personal", new_shared, update.state).sets
    assert all(torch.equal(sets["frozen"][k], new_shared[k]) for k in new_shared)


# ---- switches that are not the paper's (docs/findings.md, "Where FedDAT leads") -----------------------


def test_kd_warmup_rounds_trains_round_one_exactly_as_without_kd(tiny_backbone, tiny_clients):
    client = tiny_clients[0]
    # one adapted model on the tiny backbone at a time: each wraps the backbone's blocks
    plain = build("feddat", tiny_backbone, **{"feddat.kd": "none"})
    shared, state = plain.init_shared(), plain.init_client_state(client)
    u_plain = plain.client_update(shared, state, client, 1)
    warm = build("feddat", tiny_backbone, **{"feddat.kd_warmup_rounds": 1})
    u_warm = warm.client_update(shared, state, client, 1)
    assert u_warm.metrics["kd_student"] == 0 == u_warm.metrics["kd_dat"]
    assert all(torch.equal(u_warm.shared[k], u_plain.shared[k]) for k in shared)
    assert all(torch.equal(u_warm.state[k], u_plain.state[k]) for k in state)
    u2 = warm.client_update(warm.aggregate(shared, [u_warm]), u_warm.state, client, 2)
    assert u2.metrics["kd_student"] > 0 and u2.metrics["kd_dat"] > 0


@pytest.mark.parametrize("schedule", ["reference", "fused"])
def test_head_update_student_moves_the_head_only_with_the_students_loss(tiny_backbone, tiny_clients, schedule):
    method = build("feddat", tiny_backbone, **{"feddat.head_update": "student", "feddat.schedule": schedule})
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    head = method.load_client(shared, state, client)
    method.load_client = lambda *a: head  # watch the head the update trains
    steps: list[tuple[int, dict]] = []
    hook = register_optimizer_step_post_hook(lambda opt, *_: steps.append((id(opt), {k: v.clone() for k, v in head.state_dict().items()})))
    try:
        update = method.client_update(shared, state, client, round_=1)
    finally:
        hook.remove()
    assert len(steps) == 6  # 2 minibatches × (A_s, the student's head, A_c): no DAT head step
    head_steps = [i for i, (opt, snap) in enumerate(steps) if any(not torch.equal(snap[k], (steps[i - 1][1] if i else prefixed_head(state))[k]) for k in snap)]
    assert len(head_steps) == 2 and len({steps[i][0] for i in head_steps}) == 1  # one optimiser, once per minibatch
    assert any(not torch.equal(update.state[k], state[k]) for k in state if k.startswith("client."))  # A_c still trains
    with pytest.raises(ConfigError, match="head_update = student needs feddat.optimizer = separate"):
        config_mod.load(None, {"feddat.head_update": "student", "feddat.optimizer": "single"})


def prefixed_head(state: dict) -> dict:
    return {k[5:]: v for k, v in state.items() if k.startswith("head.")}


def test_the_reference_configs_optimiser_and_freeze_together(tiny_backbone, tiny_clients):
    """As the released code from round 2 on: A_c is out of the single optimiser and stays
    bit-identical (no gradient either), A_s and the head still move, and A_s moves in every DAT
    step too (by momentum)."""
    method = build("feddat", tiny_backbone, **{"feddat.optimizer": "single", "feddat.client_adapter_rounds": 1, "train.batch_size": 4})
    client = tiny_clients[0]
    shared, state = method.init_shared(), method.init_client_state(client)
    u1 = method.client_update(shared, state, client, round_=1)
    shared1 = method.aggregate(shared, [u1])
    own = {id(p) for p in method.model.adapter_parameters("client")}
    held, shots = [], []
    hooks = [
        register_optimizer_step_pre_hook(lambda opt, *_: held.append({id(p) for g in opt.param_groups for p in g["params"]})),
        register_optimizer_step_post_hook(lambda *_: shots.append(method.model.adapter_state("shared"))),
    ]
    try:
        u2 = method.client_update(shared1, u1.state, client, round_=2)
    finally:
        for h in hooks:
            h.remove()
    assert held and not any(ids & own for ids in held)
    assert all(p.grad is None for p in method.model.adapter_parameters("client"))
    assert all(torch.equal(u1.state[k], u2.state[k]) for k in u1.state if k.startswith("client."))
    assert any(not torch.equal(u1.state[k], u2.state[k]) for k in u1.state if k.startswith("head."))
    moved = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(shots, shots[1:])]
    assert all(moved)  # student steps by the gradient, DAT steps by momentum and decay


def test_feddat_losses_use_the_configured_task_loss():
    from feddat.algorithms.feddat.step import dat_loss, student_loss

    f = config_mod.Config().feddat
    torch.manual_seed(1)
    z_s, z_dat, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 4, 2])
    for kind in ("auto", "bce"):
        kd_s = student_loss(f, z_s, z_dat, y, kind)[1]
        assert student_loss(f, z_s, z_dat, y, kind)[0] == pytest.approx(float(task_loss(z_s, y, kind) + kd_s), rel=1e-6)
        kd_d = dat_loss(f, z_dat, z_s, y, kind)[1]
        assert dat_loss(f, z_dat, z_s, y, kind)[0] == pytest.approx(float(task_loss(z_dat, y, kind) + kd_d), rel=1e-6)
    assert student_loss(f, z_s, z_dat, y, "bce")[0] != pytest.approx(float(student_loss(f, z_s, z_dat, y, "auto")[0]), rel=1e-3)


def test_official_schedule_horizon_counts_epochs_not_the_epochs_run(tiny_backbone, tiny_clients):
    """Two local epochs of 8 minibatches: FedAvg ticks 16 times through the same 120-tick horizon
    (8 minibatches x 15 epochs), passing the end of warm-up at tick 12, whatever local_epochs is."""
    method = build("fedavg", tiny_backbone, **{"train.lr_schedule": "official", "train.batch_size": 2, "train.local_epochs": 2})
    (seen,) = lrs_by_optimizer(method, tiny_clients[0])
    assert [v for _, v in seen] == pytest.approx(transformers_lrs(method.cfg.train.lr, horizon=120, ticks=16), rel=1e-12)
