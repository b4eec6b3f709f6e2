"""Watching a run: tqdm bars on a real pseudo-terminal, plain lines elsewhere; TensorBoard event
files and MLflow runs holding every per-round per-client metric and the configuration."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import sys
import termios
import threading

import pytest
import torch

from conftest import tiny_config
from feddat import progress
from feddat.engines.embedded import run_method
from feddat.peft.model import AdaptedModel


def train(tiny_backbone, clients, run_dir, **overrides):
    cfg = tiny_config(**overrides)
    cfg.run.out_dir = str(run_dir.parent)
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    run_dir.mkdir()
    lines: list[str] = []
    run_method("feddat", cfg, model, clients, run_dir, torch.device("cpu"), log=lines.append)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return cfg, lines, records


def read_terminal(fd: int, into: list[bytes]) -> None:
    """Drain a pty's master side (a full pty buffer would block the writer)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the slave side closed
            return
        if not chunk:
            return
        into.append(chunk)


def test_bars_with_rates_and_eta_on_a_terminal(tiny_backbone, tiny_clients, tmp_path, monkeypatch):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    terminal = os.fdopen(slave, "w", buffering=1)
    assert progress.is_terminal(terminal)
    received: list[bytes] = []
    reader = threading.Thread(target=read_terminal, args=(master, received), daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stderr", terminal)  # progress goes to stderr; here it is a real terminal
    monkeypatch.setattr(progress.Bars, "mininterval", 0.0)  # draw every update: a tiny run is faster than tqdm's 0.1 s throttle
    _, lines, _ = train(tiny_backbone, tiny_clients, tmp_path / "r", **{"run.progress": "auto"})
    terminal.close()
    reader.join(timeout=10)
    screen = b"".join(received).decode(errors="replace")
    assert "feddat: 100%" in screen and "2/2 [" in screen  # the rounds bar, finished
    for unit in ("round", "client", "step"):  # rounds, the round's clients, a client's local steps
        assert re.search(rf"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/{unit}|{unit}/s)\]", screen), unit  # done/total [elapsed<ETA, rate]
    assert any("[feddat] round 2/2" in line for line in lines)  # log lines still reach the log


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_plain_lines_without_a_terminal(mode, tiny_backbone, tiny_clients, tmp_path, monkeypatch):
    log_file = open(tmp_path / "stderr.log", "w")
    monkeypatch.setattr(sys, "stderr", log_file)
    _, lines, _ = train(tiny_backbone, tiny_clients, tmp_path / "r", **{"run.progress": mode})
    log_file.close()
    assert (tmp_path / "stderr.log").read_text() == ""  # no bar, no carriage return in a log
    assert [line.split()[1] for line in lines] == ["round", "round"] and all("\r" not in line for line in lines)
    assert isinstance(progress.display("auto", print, open(os.devnull, "w")), progress.Lines)


def test_tensorboard_and_mlflow_hold_every_metric_and_the_config(tiny_backbone, tiny_clients, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    cfg, _, records = train(tiny_backbone, tiny_clients, run_dir, **{"tracking.loggers": ["tensorboard", "mlflow"], "tracking.experiment": "tiny"})
    expected = {}  # tag -> [(round, value)]
    for r in records:
        for field, value in r.items():
            if field not in ("method", "round", "client", "kind") and isinstance(value, (int, float)):
                expected.setdefault(f"{r['kind']}/{r['client']}/{field}", []).append((r["round"], float(value)))
    assert any(tag.startswith("eval/") for tag in expected) and any(tag.startswith("train/") for tag in expected)

    events = EventAccumulator(str(run_dir / "tensorboard" / "feddat"))
    events.Reload()
    for tag, points in expected.items():
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(s, torch.tensor(v).float().item()) for s, v in points], tag
    assert "federation" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "run/feddat" and run.info.status == "FINISHED"
    assert run.data.params["federation.rounds"] == "2" and run.data.params["backbone.name"] == "vilt"
    for tag, points in expected.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)] == points, tag
    assert "eval/mean/global" in run.data.metrics and "summary/wall_s" in run.data.metrics
    config = client.download_artifacts(run.info.run_id, "config.toml", str(tmp_path))
    assert open(config).read() == cfg.to_toml()
