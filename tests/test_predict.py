"""Using a trained model: `feddat predict` and `feddat export` on a tiny real run.

The predictor must be the model evaluation scored (its answers on the test split give exactly
the score metrics.jsonl recorded), and an export must reload to the same logits, through
feddat's own loader and, for LoRA, through peft's `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_IMAGE
from feddat import config as config_mod
from feddat import inference
from feddat.cli import main
from feddat.data.sources import raw_clients
from feddat.engines.runner import run_experiment
from feddat.runtime import derive_seed, load_tensors


@pytest.fixture(scope="module")
def trained(tiny_vilt_dir, tmp_path_factory):
    """One tiny run of FedDAT and the two LoRA methods (2 rounds, 5 function clients)."""
    out = tmp_path_factory.mktemp("predict")
    cfg = config_mod.load(None, {
        "backbone.name": "vilt", "backbone.path": tiny_vilt_dir, "backbone.image_size": TINY_IMAGE, "backbone.max_text_len": 12,
        "adapter.reduction_factor": 4, "peft.lora_rank": 2, "data.benchmark": "function", "data.train_per_client": 8,
        "data.test_per_client": 6, "data.cache_dir": str(out / "cache"), "federation.rounds": 2, "federation.eval_every": 2,
        "train.batch_size": 8, "train.lr": 0.01, "run.methods": "feddat,fedavg_lora,feddat_lora", "run.out_dir": str(out),
        "run.name": "tiny", "run.threads": 1, "run.precision": "fp32",  # compared with float32 forwards outside feddat
    })  # fmt: skip
    run_dir = run_experiment(cfg, log=lambda s: None)
    test = {c.name: c.test for c in raw_clients(cfg)}
    return run_dir, test


def recorded(run_dir, method, client, view):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval" and r["method"] == method and r["client"] == client][-1][view]


@pytest.mark.parametrize("view", ["global", "personal"])
def test_predictor_is_the_evaluated_model_and_its_export_reloads_exactly(trained, view, tmp_path):
    run_dir, test = trained
    split = test["count"]
    model = inference.load(run_dir, "feddat", "count", view)
    logits = model.logits(list(split.images), split.questions)
    answers = [model.answers[i] for i in logits.argmax(-1).tolist()]
    assert sum(a == b for a, b in zip(answers, split.answers)) / len(answers) == recorded(run_dir, "feddat", "count", view)
    exported = inference.export(run_dir, "feddat", "count", tmp_path / "export", view)
    info = json.loads((exported / "feddat_model.json").read_text())
    assert info["kind"] == "bottleneck" and info["active"] == (["shared"] if view == "global" else ["frozen", "client"])
    assert {k.split(".")[0] for k in load_tensors(exported / "adapters.safetensors")} == set(info["active"])
    assert torch.equal(inference.load(exported).logits(list(split.images), split.questions), logits)


def test_personal_and_global_views_differ_where_the_client_adapter_acts(trained):
    run_dir, test = trained
    split = test["count"]
    global_, personal = (inference.load(run_dir, "feddat", "count", v).logits(list(split.images), split.questions) for v in ("global", "personal"))
    assert not torch.allclose(global_, personal)


@pytest.mark.parametrize("method, view, sets", [("fedavg_lora", "global", 1), ("feddat_lora", "personal", 2)])
def test_lora_exports_load_with_peft_to_the_same_logits(trained, tiny_vilt_dir, method, view, sets, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer, ViltModel

    from feddat.backbones.vilt import ViLT
    from feddat.heads import TaskHead

    run_dir, test = trained
    split = test["spatial"]
    ours = inference.load(run_dir, method, "spatial", view).logits(list(split.images), split.questions)
    exported = inference.export(run_dir, method, "spatial", tmp_path / "lora", view)
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["r"] == 2 * sets and config["base_model_name_or_path"] == tiny_vilt_dir  # n sets of rank 2 stacked
    # The ecosystem's path: peft on a fresh transformers ViltModel, our head on top.
    peft_model = PeftModel.from_pretrained(ViltModel.from_pretrained(tiny_vilt_dir), str(exported))
    backbone = ViLT(peft_model.base_model.model, AutoTokenizer.from_pretrained(tiny_vilt_dir), image_size=TINY_IMAGE, max_text_len=12)
    info = json.loads((exported / "feddat_model.json").read_text())
    head = TaskHead(backbone.hidden_size, len(info["client"]["answers"]))
    head.load_state_dict(load_tensors(exported / "head.safetensors"))
    ids, mask = backbone.tokenize(split.questions)
    torch.manual_seed(derive_seed(0, "forward", "eval"))  # ViLT draws on the RNG in forward, as evaluation seeds it
    with torch.no_grad():
        theirs = head.eval()(backbone(backbone.encode_images(split.images), ids, mask))
    assert torch.allclose(theirs, ours, atol=1e-5)
    # and feddat's own loader reads the peft files back
    assert torch.allclose(inference.load(exported).logits(list(split.images), split.questions), ours, atol=1e-6)


def test_predict_command_prints_the_top_answers_with_probabilities(trained, tmp_path, capsys):
    from PIL import Image

    run_dir, test = trained
    split = test["object"]
    Image.fromarray(split.images[0]).save(tmp_path / "q.png")
    assert main(["predict", str(run_dir), "--method", "feddat", "--client", "object", "--image", str(tmp_path / "q.png"), "--question", split.questions[0], "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("feddat, global view (A_s + head), client 'object'")
    ranked = [line.split() for line in lines[2:]]
    assert [r[0] for r in ranked] == ["1.", "2.", "3."]
    probabilities = [float(r[-1]) for r in ranked]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    (batch,) = inference.predict(run_dir, [tmp_path / "q.png"], [split.questions[0]], method="feddat", client="object", top=3)
    assert [a for a, _ in batch] == [r[1] for r in ranked]  # the Python function on a batch says the same


def test_wrong_requests_name_what_the_run_holds(trained, capsys):
    run_dir, _ = trained
    with pytest.raises(inference.ModelNotFound, match="no client 'nobody'; its clients are object, attribute, count, spatial, logic"):
        inference.load(run_dir, "feddat", "nobody")
    with pytest.raises(inference.ModelNotFound, match="this run finished feddat, fedavg_lora, feddat_lora"):
        inference.load(run_dir, "fedprox", "count")
    with pytest.raises(ValueError, match="'fedavg_lora' has no personal view"):
        inference.load(run_dir, "fedavg_lora", "count", "personal")
    assert main(["export", str(run_dir), "--method", "feddat", "--out", "x"]) == 1
    assert "needs --client" in capsys.readouterr().err
