"""Which clients a run has, and one node's own client, built exactly as the embedded engine
builds it (data.clients.load_clients) but without generating the other clients' data."""

from __future__ import annotations

from pathlib import Path

from feddat.config import Config
from feddat.data import faults
from feddat.data.clients import ClientData, DataError, RawClient, build_client


class PartitionError(ValueError):
    """A node names a client the configured benchmark does not have."""


def client_names(cfg: Config) -> list[str]:
    """The run's clients in the embedded engine's order (client sampling indexes this list)."""
    if cfg.flower.clients:
        return list(cfg.flower.clients)
    from feddat.data.sources import benchmark_sources, raw_clients

    try:
        if cfg.data.partition == "natural":
            return [s.name for s in benchmark_sources(cfg)]  # cheap: no data is generated
        with faults.applied(cfg.data.on_bad_record):
            return [c.name for c in raw_clients(cfg)]  # a re-split: the plan needs the pooled data
    except DataError as err:
        origin = clients_origin(cfg)
        raise DataError(f"{err}; {origin}" if origin else str(err)) from err


def clients_origin(cfg: Config) -> str:
    """Where client_names found the run's clients, where that host's own disk decided them: your
    folders listed under data.root on the ServerApp's host, which need not hold the data (the
    SuperNodes' hosts do); '' where the list holds wherever it is computed."""
    if cfg.flower.clients or cfg.data.benchmark != "folder":
        return ""
    return (f"the run's clients are the sub-folders of data.root {cfg.data.root} on the ServerApp's host; where the data live only on "
            f"the SuperNodes' hosts, name the clients in flower.clients (clients = [\"north\", \"south\"] in the [flower] table, or --flower.clients north,south)")


def node_partition(cfg: Config, node_config, node_id: int) -> str:
    """The client a SuperNode serves: its node config's 'partition' (a client name, the
    deployment engine), else 'partition-id' (an index into `client_names`, as Flower's
    simulation engine numbers its virtual nodes)."""
    from feddat.engines.flower.transport import PARTITION_KEY

    if node_config.get(PARTITION_KEY):
        return str(node_config[PARTITION_KEY])
    if "partition-id" in node_config:
        names = client_names(cfg)
        index = int(node_config["partition-id"])
        if not 0 <= index < len(names):
            raise PartitionError(f"virtual node {node_id} has partition-id {index}, but the run has {len(names)} clients ({', '.join(names)}): simulate with exactly {len(names)} SuperNodes")
        return names[index]
    raise PartitionError(f"SuperNode {node_id} has no '{PARTITION_KEY}' in its node config; start it with --node-config '{PARTITION_KEY}=\"<client name>\"'")


def raw_partition(cfg: Config, name: str) -> RawClient:
    with faults.applied(cfg.data.on_bad_record):
        return _raw_partition(cfg, name)


def _raw_partition(cfg: Config, name: str) -> RawClient:
    from feddat.data.sources import benchmark_sources, raw_clients

    d = cfg.data
    if d.partition == "natural":
        # The natural branch of data.sources.raw_clients, for this one source only.
        sources = {s.name: s for s in benchmark_sources(cfg)}
        if name in sources:
            s = sources[name]
            return RawClient(s.name, s.make("train", d.train_per_client), s.make("test", d.test_per_client), s.task, s.classes)
    else:
        sources = {c.name: c for c in raw_clients(cfg)}
        if name in sources:
            return sources[name]
    raise PartitionError(f"partition '{name}' is not a client of the {d.benchmark} benchmark ({d.partition} partition); its clients are: {', '.join(sources)}")


def load_partition(cfg: Config, backbone, name: str) -> ClientData:
    raw = raw_partition(cfg, name)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    try:
        return build_client(raw.name, raw.train, raw.test, backbone, cfg.data.max_answers, cache_dir, raw.task, raw.classes)
    except DataError as err:
        raise DataError(f"partition '{name}': {err}") from err


def build_model(cfg: Config, device):
    """The frozen backbone with adapter sites, as the embedded runner builds it (both sides need it)."""
    from feddat.backbones import backbone_from_config
    from feddat.peft.model import AdaptedModel

    backbone = backbone_from_config(cfg.backbone).to(device)
    return AdaptedModel.from_config(backbone, cfg.adapter, cfg.run.prefix_cache_mb)
