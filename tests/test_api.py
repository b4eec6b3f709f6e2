"""The Python API (docs/guide/using-a-model.md, 'Python API'): feddat.Config.from_toml, feddat.run and what it returns."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import feddat
from conftest import TINY_IMAGE
from feddat.config import ConfigError


def test_import_feddat_stays_light():
    # The API is imported on first use: a script that only builds a Config pays for no torch.
    out = subprocess.run([sys.executable, "-c", "import sys, feddat; feddat.Config; print('torch' in sys.modules)"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_config_from_toml_reads_a_file_then_overrides(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text('[federation]\nrounds = 7\n[run]\nmethods = ["feddat", "fedprox"]\n')
    cfg = feddat.Config.from_toml(path, {"train.lr": "0.01"})
    assert (cfg.federation.rounds, cfg.run.methods, cfg.train.lr, cfg.data.benchmark) == (7, ["feddat", "fedprox"], 0.01, "domain")
    assert feddat.Config.from_toml(None).federation.rounds == 5  # the defaults
    with pytest.raises(ConfigError, match="did you mean 'federation.rounds'"):
        feddat.Config.from_toml(None, {"federation.roundz": 3})


def test_run_returns_what_the_command_line_prints(tiny_vilt_dir, tmp_path):
    cfg = feddat.Config.from_toml(None, {
        "backbone.name": "vilt", "backbone.path": tiny_vilt_dir, "backbone.image_size": TINY_IMAGE, "backbone.max_text_len": 12,
        "adapter.reduction_factor": 4, "data.benchmark": "function", "data.train_per_client": 8, "data.test_per_client": 6,
        "data.cache_dir": str(tmp_path / "cache"), "federation.rounds": 1, "train.batch_size": 8, "run.out_dir": str(tmp_path), "run.threads": 1,
    })  # fmt: skip
    printed: list[str] = []
    result = feddat.run(cfg, {"run.name": "api", "run.methods": "feddat"}, log=printed.append)
    assert result.run_dir == tmp_path / "api"
    assert result.table == (tmp_path / "api" / "results.md").read_text() and result.table.strip() in "\n".join(printed)
    assert set(result.scores["feddat"]) == {"object", "attribute", "count", "spatial", "logic"}
    row = next(line for line in result.table.splitlines() if line.startswith("| feddat | global |"))
    assert row.split("|")[-2].strip() == f"{100 * result.mean('feddat'):.1f}"  # the table's mean column
    assert result.summary["methods"][0]["method"] == "feddat" and "environment" in result.summary
    assert cfg.run.name == ""  # the overrides went to a copy
    # and the trained model answers from Python: the run has one method, so none needs naming
    model = feddat.load_model(result.run_dir, client="count", view="personal")
    (top,) = model.predict([np.zeros((64, 64, 3), np.uint8)], ["how many circles are there?"], top=2)
    assert len(top) == 2 and {a for a, _ in top} <= set(model.answers) and top[0][1] >= top[1][1]
    # an export holds one model: loading it needs no method, client or view, whichever view it holds
    exported = feddat.load_model(feddat.export(result.run_dir, "count", tmp_path / "count-personal", view="personal"))
    assert exported.predict([np.zeros((64, 64, 3), np.uint8)], ["how many circles are there?"], top=2)[0] == top
