"""Secure aggregation on Flower's deployment engine, with Flower's own SecAgg+.

Flower 1.41 ships SecAgg+ as a server workflow (`flwr.server.workflow.SecAggPlusWorkflow`)
and a client mod (`flwr.client.mod.secaggplus_mod`). The workflow belongs to Flower's legacy
API: it takes a `LegacyContext` whose legacy `Strategy` hands it the fit instructions
(`configure_fit`) and receives the unmasked aggregate (`aggregate_fit`); the mod turns the
ClientApp's legacy `FitRes` into a masked vector (client_app.secure_mod applies it). feddat's ServerApp uses the Message API
(`MethodStrategy`), so a secure training round runs that workflow unchanged, on the run's
Grid, with `SecureRound` as the legacy strategy: it only carries feddat's instructions in and
the aggregate out. No cryptography here: keys, secret sharing, masks, quantisation and
unmasking are Flower's.

One round, with K sampled clients (K >= 2):

- setup, share keys: Flower's two key-exchange phases (the mod answers them on the node).
- collect masked vectors: each client gets A_s in a FitIns, trains (`Method.client_update`,
  then `Method.client_side`: DP clipping when configured), checks its change
  Δ_k = A_s^k − A_s (finite, within ±clipping_range) and returns it as a FitRes with its
  weight w_k (n_k, or 1 under uniform weighting or DP); the mod scales Δ_k by w_k / W
  (W: the largest weight this round), quantises it and masks it.
- unmask: the server reconstructs the masks from the surviving shares and obtains
  Σ w_k Δ_k / Σ w_k, the same weighted mean `Method.aggregate` takes, and only that.

The server adds A_s back and hands the mean to `Method.server_round` as the update of each
of the K clients that contributed (equal weights over identical copies give the mean back),
so validation, DP noise (std z·C/K) and server optimisers (FedAvgM, FedAdam, FedDyn,
SCAFFOLD) act as in the embedded engine; validation can only see the aggregate.

Error per coordinate, from Flower's stochastic quantisation (< one step of 2c/Q per client,
c = clipping_range, Q = quantization_range): |mean − exact mean| < K · (2c/Q) / Σ_k (w_k/W),
i.e. 2c/Q when the weights are equal; the weights themselves are rounded to 1/Q of W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from feddat.algorithms import privacy
from feddat.config import Config
from feddat.engines.flower import transport

Tensors = dict[str, torch.Tensor]
MOD_RANGE = 2**32  # Flower's default modulus for the masks; K·Q must stay below it
FITINS = "fitins"  # the legacy FitIns records the workflow sends


class SecureAggregationError(RuntimeError):
    """A secure round cannot be run or did not complete."""


# ---- client side ------------------------------------------------------------------------


def is_masking_phase(content: RecordDict) -> bool:
    """The SecAgg+ phase that runs the client step: a legacy FitIns instead of feddat's records."""
    return f"{FITINS}.config" in content.config_records


@dataclass
class Instructions:
    method: str
    round: int
    weighting: str  # "examples" or "uniform"
    max_weight: float
    clipping_range: float
    rejected: tuple[int, ...] = ()  # rounds whose update from this client the server rejected (transport.REJECTED_KEY)


def read_fitins(content: RecordDict) -> tuple[Instructions, Tensors]:
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    c = fitins.config
    names = str(c["names"]).split("\n") if c["names"] else []
    arrays = parameters_to_ndarrays(fitins.parameters)
    shared = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in zip(names, arrays, strict=True)}
    ask = Instructions(str(c["method"]), int(c["round"]), str(c["weighting"]), float(c["max-weight"]), float(c["clipping-range"]), tuple(transport.rejected_rounds(c)))
    return ask, shared


def fitres_content(ask: Instructions, shared: Tensors, update_shared: Tensors, num_examples: int, metrics: dict[str, Any], client: str) -> RecordDict:
    """The FitRes the mod masks: Δ = A_s^k − A_s and the weight, after checking what the server
    cannot check any more (finiteness, the clipping range, the weight bound)."""
    weight = 1 if ask.weighting == "uniform" else int(num_examples)
    if weight > ask.max_weight or weight <= 0:
        raise ValueError(f"client '{client}': weight {weight} is outside (0, {ask.max_weight:g}], the bound the server set for this round")
    deltas = []
    for key, before in shared.items():
        delta = update_shared[key].detach().double().cpu() - before.double()
        if not torch.isfinite(delta).all():
            raise ValueError(f"client '{client}': '{key}' of its update holds NaN or infinite values; not sent")
        largest = float(delta.abs().max()) if delta.numel() else 0.0
        if largest * weight / ask.max_weight > ask.clipping_range:
            raise ValueError(f"client '{client}': its change of '{key}' reaches {largest:.4g}, beyond flower.secagg_clipping_range = {ask.clipping_range:g}; SecAgg+ would clip it silently (raise the range)")
        deltas.append(delta.numpy())
    values = {k: (v if isinstance(v, (int, float)) else str(v)) for k, v in metrics.items()}
    res = FitRes(status=Status(Code.OK, "ok"), parameters=ndarrays_to_parameters(deltas), num_examples=weight, metrics={**values, "client": client})
    return compat.fitres_to_recorddict(res, keep_input=True)


# ---- server side ------------------------------------------------------------------------


def check_possible(cfg: Config, sampled: int) -> None:
    """Refuse up front what SecAgg+ cannot do (the per-round checks repeat this)."""
    if sampled < 2:
        raise SecureAggregationError(f"flower.secure_aggregation needs at least 2 clients per round, but federation.fraction samples {sampled}: one client's 'sum' is its update")
    if sampled * cfg.flower.secagg_quantization_range >= MOD_RANGE:
        raise SecureAggregationError(f"{sampled} clients per round times flower.secagg_quantization_range = {cfg.flower.secagg_quantization_range} reaches 2**32: the masked sum would overflow; lower the range")


def protocol_sizes(cfg: Config, k: int) -> tuple[int | float, int]:
    """Flower's (num_shares, reconstruction_threshold) for a round of k clients."""
    f = cfg.flower
    shares = k if f.secagg_num_shares == 0 else min(f.secagg_num_shares, k)
    threshold = f.secagg_reconstruction_threshold or shares // 2 + 1
    threshold = max(2, min(threshold, shares))
    # every sampled client as neighbours: Flower's float form (1.0 = all), which also admits k = 2
    return (1.0 if shares >= k else shares), threshold


class SecureRound(LegacyStrategy):
    """The legacy strategy `SecAggPlusWorkflow` drives: it hands out feddat's fit instructions
    and keeps the unmasked aggregate. Nothing else of the legacy API is used."""

    def __init__(self, fitins: dict[int, FitIns], grid):
        self.fitins, self.grid = fitins, grid
        self.results: list[tuple[Any, FitRes]] = []
        self.aggregated = False

    def configure_fit(self, server_round, parameters, client_manager):
        return [(GridClientProxy(node, self.grid, 0), ins) for node, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.aggregated = list(results), True
        return None, {}  # the workflow's own bookkeeping is not needed: feddat keeps A_s

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class WatchedGrid:
    """The Grid as the workflow sees it: notes which nodes failed or stayed silent in a phase,
    and the bytes of the masked vectors received."""

    def __init__(self, grid):
        self.grid = grid
        self.errors: dict[int, Any] = {}
        self.silent: set[int] = set()
        self.masked_bytes = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.silent |= {m.metadata.dst_node_id for m in messages} - {r.metadata.src_node_id for r in replies}
        for r in replies:
            if r.has_error():
                self.errors.setdefault(r.metadata.src_node_id, r.error)
            elif RECORD_KEY_CONFIGS in r.content.config_records and Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]:
                self.masked_bytes += sum(len(b) for b in r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


@dataclass
class Outcome:
    mean: Tensors | None  # A_s + the weighted mean change of the contributors; None if none
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # contributor -> its metrics (never its update)
    errors: dict[int, Any] = field(default_factory=dict)  # node -> Flower Error, for nodes that failed
    silent: set[int] = field(default_factory=set)  # nodes that did not reply to some phase
    bytes_down: int = 0
    bytes_up: int = 0


def secure_mean(grid, cfg: Config, method: str, server_round: int, shared: Tensors, sent: dict[int, str], weights: dict[str, int], log: Callable[[str], None], notes: dict[str, dict] | None = None) -> Outcome:
    """One SecAgg+ training round over the nodes in `sent` (node -> client); `notes`: more
    config for a client's FitIns (the rounds its updates were rejected in)."""
    k = len(sent)
    check_possible(cfg, k)
    f = cfg.flower
    uniform = cfg.federation.weighting == "uniform" or privacy.enabled(cfg.privacy)  # DP averages with equal weights
    max_weight = 1.0 if uniform else float(max(max(weights.get(c, 1) for c in sent.values()), 1))
    names = list(shared)
    parameters = ndarrays_to_parameters([shared[n].detach().cpu().numpy() for n in names])
    config = {"method": method, "round": server_round, "names": "\n".join(names), "weighting": "uniform" if uniform else "examples", "max-weight": max_weight, "clipping-range": float(f.secagg_clipping_range)}
    notes = notes or {}
    fitins = {node: FitIns(Parameters(tensors=list(parameters.tensors), tensor_type=parameters.tensor_type), {**config, **notes.get(client, {})}) for node, client in sent.items()}
    strategy = SecureRound(fitins, grid)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(Parameters(tensors=[], tensor_type=""), keep_input=True)
    shares, threshold = protocol_sizes(cfg, k)
    workflow = SecAggPlusWorkflow(shares, threshold, max_weight=max_weight, clipping_range=float(f.secagg_clipping_range), quantization_range=int(f.secagg_quantization_range), modulus_range=MOD_RANGE, timeout=f.round_timeout)
    watched = WatchedGrid(grid)
    workflow(watched, context)
    out = Outcome(mean=None, errors=watched.errors, silent=watched.silent - set(watched.errors), bytes_down=sum(len(b) for b in parameters.tensors) * k, bytes_up=watched.masked_bytes)
    if not strategy.aggregated or not strategy.results:
        return out
    for proxy, res in strategy.results:
        out.metrics[sent[proxy.node_id]] = {m: v for m, v in res.metrics.items() if m != "client"}
    arrays = parameters_to_ndarrays(strategy.results[0][1].parameters)  # every FitRes carries the one aggregate
    if len(arrays) != len(names):
        raise SecureAggregationError(f"round {server_round}: the secure aggregate has {len(arrays)} arrays, A_s has {len(names)}")
    mean = {}
    for name, array in zip(names, arrays):
        before = shared[name]
        change = torch.from_numpy(np.asarray(array, dtype=np.float64))
        if tuple(change.shape) != tuple(before.shape):  # validated by the server step too; named here
            raise SecureAggregationError(f"round {server_round}: the secure aggregate of '{name}' has shape {tuple(change.shape)}, expected {tuple(before.shape)}")
        mean[name] = (before.detach().cpu().double() + change).to(before.dtype)
    out.mean = mean
    log(f"  secure aggregation (SecAgg+, {len(out.metrics)} of {k} clients, {shares if isinstance(shares, int) else k} shares, threshold {threshold}): max error per coordinate {error_bound(cfg, [weights.get(c, 1) if not uniform else 1 for c in out.metrics], max_weight):.3g}")
    return out


def error_bound(cfg: Config, weights: list[float], max_weight: float) -> float:
    """Bound on |secure mean − exact weighted mean| per coordinate: Flower's stochastic
    quantisation (< one step 2c/Q per client, over Σ r_k with r_k = round(Q·w_k/W)/Q), plus the
    weights' rounding (Σ_k |r_k/Σr − w_k/Σw| times the largest change a client may send, c·W/w_k)."""
    f = cfg.flower
    c, q = f.secagg_clipping_range, f.secagg_quantization_range
    ratios = [round(w / max_weight * q) / q for w in weights]
    if not ratios or sum(ratios) <= 0:
        return math.inf
    quantisation = len(ratios) * (2 * c / q) / sum(ratios)
    rounding = sum(abs(r / sum(ratios) - w / sum(weights)) * c * max_weight / w for r, w in zip(ratios, weights))
    return quantisation + rounding
