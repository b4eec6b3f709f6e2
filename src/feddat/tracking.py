"""Experiment tracking with the tools the field uses: TensorBoard event files and MLflow runs.

`tracking.loggers` picks them (none by default). Each method of a run is one TensorBoard log
folder (`RUN_DIR/tensorboard/<method>`) and one MLflow run (named `<run dir>/<method>`, in the
experiment `tracking.experiment`, default `feddat-<benchmark>`). Both get the configuration
and, after every committed round, every numeric field of every record the round wrote to
metrics.jsonl, keyed `<kind>/<client>/<field>` (`eval/night/global`, `train/night/loss_student`,
`eval/night/global/count`), plus the mean over clients (`eval/mean/global`), at step = round;
at the end the method's summary (`summary/wall_s`, ...).

MLflow's store is `tracking.mlflow_uri`, or by default the local SQLite file
`<run.out_dir>/mlflow.db` with artifacts in `<run.out_dir>/mlartifacts` (MLflow's file store is
in maintenance mode and refuses to start without an opt-out; SQLite is its local default now):
`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows it. A resumed run continues the
MLflow run it started (found by its tags), and only committed rounds are logged, so a round
replayed after a crash is not logged twice.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any, Iterator

from feddat.config import Config, ConfigError

INSTALL_HINT = "pip install 'feddat[tracking]'"


def metric_values(records: list[dict]) -> dict[str, float]:
    """`<kind>/<client>/<field>` -> value for every numeric field of a round's records, and
    `<kind>/mean/<field>` over the clients that have the field."""
    values: dict[str, float] = {}
    per_field: dict[str, list[float]] = {}
    for record in records:
        kind, client = record.get("kind", "record"), safe_name(str(record.get("client", "all")))
        for field, value in record.items():
            if field in ("method", "round", "client", "kind") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            field = safe_name(field, keep="/")  # a category such as VQA's "yes/no" stays readable
            values[f"{kind}/{client}/{field}"] = float(value)
            if client != "all":
                per_field.setdefault(f"{kind}/mean/{field}", []).append(float(value))
    values.update({key: sum(v) / len(v) for key, v in per_field.items() if all(x == x for x in v)})
    return values


def safe_name(text: str, keep: str = "") -> str:
    """`text` as part of a metric key: MLflow accepts letters, digits, _-. and / only."""
    return re.sub(rf"[^A-Za-z0-9_.{re.escape(keep)}-]", "_", text)


def flat_config(cfg: Config) -> dict[str, str]:
    return {f"{section}.{key}": str(value) for section, values in cfg.to_dict().items() for key, value in values.items()}


class TensorBoard:
    """Event files in RUN_DIR/tensorboard/<method> (`tensorboard --logdir RUN_DIR/tensorboard`)."""

    def __init__(self, cfg: Config, run_dir: Path, method: str, resume: bool):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(f"tracking.loggers has 'tensorboard', but the tensorboard package is not installed ({INSTALL_HINT})") from err
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard" / method))
        if not resume:
            # Indented: TensorBoard's text view renders Markdown, and this keeps the TOML verbatim.
            self.writer.add_text("config", "\n".join("    " + line for line in cfg.to_toml().splitlines()), 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per method, through MlflowClient (no global state in the process)."""

    def __init__(self, cfg: Config, run_dir: Path, method: str, resume: bool):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ConfigError(f"tracking.loggers has 'mlflow', but the mlflow package is not installed ({INSTALL_HINT})") from err
        out_dir = Path(cfg.run.out_dir).resolve()
        uri = cfg.tracking.mlflow_uri or f"sqlite:///{out_dir / 'mlflow.db'}"
        if not cfg.tracking.mlflow_uri:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.experiment_id(cfg.tracking.experiment or f"feddat-{cfg.data.benchmark}", None if cfg.tracking.mlflow_uri else out_dir / "mlartifacts")
        tags = {"feddat.run_dir": str(run_dir.resolve()), "feddat.method": method}
        previous = self.find_run(experiment, tags) if resume else None
        if previous is not None:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment, run_name=f"{run_dir.name}/{method}", tags=tags).info.run_id
            self.log_config(cfg)

    def experiment_id(self, name: str, artifacts: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifacts.as_uri() if artifacts else None)

    def find_run(self, experiment: str, tags: dict[str, str]) -> str | None:
        quote = lambda text: text.replace("\\", "\\\\").replace("'", "\\'")  # noqa: E731
        query = " and ".join(f"tags.`{k}` = '{quote(v)}'" for k, v in tags.items())
        runs = self.client.search_runs([experiment], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_config(self, cfg: Config) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat_config(cfg).items()])
        self.client.log_text(self.run_id, cfg.to_toml(), "config.toml")

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


LOGGERS = {"tensorboard": TensorBoard, "mlflow": MLflow}


class Trackers:
    """Every configured logger, fed together; with no logger configured it does nothing."""

    def __init__(self, loggers: list[Any], rounds: int):
        self.loggers, self.rounds = loggers, rounds

    def log_records(self, records: list[dict]) -> None:
        if not self.loggers or not records:
            return
        values = metric_values(records)
        step = int(records[0]["round"])
        for logger in self.loggers:
            logger.log(values, step)

    def log_summary(self, summary: dict) -> None:
        values = {f"summary/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        values.update({f"summary/time_split_s/{k}": float(v) for k, v in summary.get("time_split_s", {}).items()})
        for logger in self.loggers:
            logger.log(values, self.rounds)

    def close(self, status: str) -> None:
        for logger in self.loggers:
            logger.close(status)


@contextlib.contextmanager
def trackers(cfg: Config, run_dir: Path, method: str, resume: bool = False) -> Iterator[Trackers]:
    """The loggers of `tracking.loggers` for one method of a run, closed with the run's outcome
    (MLflow status FINISHED, FAILED, or KILLED on Ctrl-C)."""
    opened = Trackers([LOGGERS[kind](cfg, Path(run_dir), method, resume) for kind in cfg.tracking.loggers], cfg.federation.rounds)
    status = "FAILED"
    try:
        yield opened
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        opened.close(status)
