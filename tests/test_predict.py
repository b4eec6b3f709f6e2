"""Using a trained model: `feddat predict` and `feddat export` on a tiny real run.

The predictor must be the model evaluation scored (its answers on the test split give exactly
the score metrics.jsonl recorded), and an export must reload to the same logits, through
feddat's own loader and, for LoRA, through peft's `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json
import re

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


# ---- bad input: a clear error, and nothing lost ------------------------------------------------


def saved_image(split, folder):
    from PIL import Image

    path = folder / "q.png"
    Image.fromarray(split.images[0]).save(path)
    return str(path)


def listing(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_an_out_folder_that_is_not_an_earlier_export(trained, tmp_path, capsys):
    import shutil

    run_dir, test = trained
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)  # another run directory
    before = listing(other)
    assert main(["export", str(run_dir), "--method", "feddat", "--client", "count", "--out", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"export folder {other} is not empty" in err and "is not an earlier export (no feddat_model.json)" in err
    assert listing(other) == before  # its config.toml untouched, no feddat_model.json added
    assert inference.load(other, "feddat", "count").deployed.sources["head"].parent.parent.parent == other  # still read as the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # no staging folder left behind
    (tmp_path / "file").write_text("mine")
    assert main(["export", str(run_dir), "--method", "feddat", "--client", "count", "--out", str(tmp_path / "file")]) == 1
    assert "is not a folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"


def test_export_replaces_an_earlier_export_whole_but_not_one_holding_other_files(trained, tmp_path, capsys):
    run_dir, _ = trained
    out = tmp_path / "export"
    out.mkdir()  # an empty folder is fine
    inference.export(run_dir, "feddat_lora", "count", out, "personal")
    assert (out / "adapter_config.json").is_file()
    assert main(["export", str(run_dir), "--method", "feddat", "--client", "count", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapters.safetensors", "config.toml", "feddat_model.json", "head.safetensors"]  # no stale peft files
    assert json.loads((out / "feddat_model.json").read_text())["method"] == "feddat"
    (out / "notes.txt").write_text("mine")
    before = listing(out)
    assert main(["export", str(run_dir), "--method", "fedavg_lora", "--client", "count", "--out", str(out)]) == 1
    assert f"export folder {out} holds an earlier export but also notes.txt" in capsys.readouterr().err
    assert listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_predict_on_an_export_refuses_a_method_client_or_view_it_does_not_hold(trained, tmp_path, capsys):
    run_dir, test = trained
    exported = inference.export(run_dir, "fedavg_lora", "spatial", tmp_path / "export")
    image = saved_image(test["spatial"], tmp_path)
    question = test["spatial"].questions[0]
    args = ["predict", str(exported), "--image", image, "--question", question]
    assert main([*args, "--client", "night", "--method", "fedavg", "--view", "personal"]) == 1
    err = capsys.readouterr().err
    assert "is an export of one model: fedavg_lora, global view, client 'spatial'; it holds no method 'fedavg' or client 'night' or view 'personal'" in err
    assert str(run_dir.resolve()) in err  # where the other models are
    assert main([*args, "--view", "personal"]) == 1
    assert "it holds no view 'personal'" in capsys.readouterr().err
    with pytest.raises(inference.ModelNotFound, match="holds no client 'count'"):
        inference.load(exported, client="count")
    assert main([*args, "--client", "spatial", "--method", "fedavg_lora", "--view", "global", "--top", "1"]) == 0  # its own: fine
    assert "fedavg_lora, global view" in capsys.readouterr().out


def test_a_head_that_does_not_fit_the_clients_answers_names_the_files_and_the_client(trained, tmp_path):
    import shutil

    run_dir, _ = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    index = json.loads((run / "clients.json").read_text())
    n = len(next(c for c in index["clients"] if c["name"] == "count")["answers"])
    for c in index["clients"]:
        if c["name"] == "count":
            c["answers"] = [f"a{i}" for i in range(n + 1)]
    (run / "clients.json").write_text(json.dumps(index))
    state = sorted((run / "state" / "feddat").glob("count.r*.safetensors"))[-1]
    with pytest.raises(ValueError) as err:
        inference.load(run, "feddat", "count")
    assert str(err.value) == (f"{state}: the head of client 'count' scores {n} answers, but {run / 'clients.json'} lists {n + 1} for it; "
                              f"they do not belong together (was {run / 'clients.json'} edited, or the state copied from another run?)")  # fmt: skip
    exported = inference.export(run_dir, "feddat", "count", tmp_path / "export")
    info = json.loads((exported / "feddat_model.json").read_text())
    info["client"]["answers"] = info["client"]["answers"][:-1]
    (exported / "feddat_model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"head.safetensors: the head of client 'count' scores {n} answers, but .*feddat_model.json lists {n - 1}"):
        inference.load(exported)


@pytest.mark.parametrize("edit, message", [
    (lambda info: info.pop("kind"), "lacks 'kind'"),
    (lambda info: info["client"].pop("answers"), "lacks 'client.answers'"),
    (lambda info: info.update(active="shared"), "'active' is 'shared', expected a JSON array"),
    (lambda info: info.update(method="nomethod"), "method 'nomethod' is not one of"),
])  # fmt: skip
def test_an_incomplete_export_file_is_refused_naming_the_file_and_the_key(trained, tmp_path, capsys, edit, message):
    run_dir, _ = trained
    exported = inference.export(run_dir, "feddat", "count", tmp_path / "export")
    info = json.loads((exported / "feddat_model.json").read_text())
    edit(info)
    (exported / "feddat_model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"^{re.escape(str(exported / 'feddat_model.json'))}:? .*{re.escape(message)}"):
        inference.load(exported)


@pytest.mark.parametrize("top", ["0", "-1", "two"])
def test_top_must_be_a_positive_integer(trained, tmp_path, capsys, top):
    run_dir, test = trained
    image = saved_image(test["object"], tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(run_dir), "--method", "feddat", "--client", "object", "--image", image, "--question", "q", "--top", top])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --top:" in err and "positive integer (1 or more)" in err
    with pytest.raises(SystemExit) as exit_:  # `data describe --top` takes the same type
        main(["data", "describe", "--data.benchmark", "function", "--top", top])
    assert exit_.value.code == 2
    assert "argument --top:" in capsys.readouterr().err


def test_top_messages_and_the_python_call(trained, capsys):
    run_dir, test = trained
    with pytest.raises(SystemExit):
        main(["data", "describe", "--top", "-1"])
    assert "argument --top: must be a positive integer (1 or more), got -1" in capsys.readouterr().err
    split = test["object"]
    with pytest.raises(ValueError, match="top must be a positive integer"):
        inference.load(run_dir, "feddat", "object").predict([split.images[0]], [split.questions[0]], top=0)


def test_an_export_records_its_backbone_and_refuses_another(trained, tiny_vilt_dir, tmp_path):
    run_dir, _ = trained
    exported = inference.export(run_dir, "feddat", "count", tmp_path / "export")
    info = json.loads((exported / "feddat_model.json").read_text())
    assert info["backbone"] == {"name": "vilt"}
    config = (exported / "config.toml").read_text()
    assert config.count('name = "vilt"') == 1
    (exported / "config.toml").write_text(config.replace('name = "vilt"', 'name = "minivl"'))
    with pytest.raises(ValueError, match=r"feddat_model.json: the model was trained on backbone 'vilt', but .*config.toml builds 'minivl'"):
        inference.load(exported)
    # foundation: the checkpoint's sha256 (its card's) is recorded and compared, before any weights load
    from feddat.backbones import backbone_identity
    from feddat.backbones.foundation import packaged_checkpoint, read_card

    sha = read_card(packaged_checkpoint())["sha256"]
    assert backbone_identity(config_mod.load(None, {"backbone.name": "foundation"}).backbone) == {"name": "foundation", "checkpoint_sha256": sha}
    (exported / "config.toml").write_text(config.replace('name = "vilt"', 'name = "foundation"').replace(f'path = "{tiny_vilt_dir}"', 'path = ""'))  # the packaged one
    info["backbone"] = {"name": "foundation", "checkpoint_sha256": "0" * 64}
    (exported / "feddat_model.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=rf"trained on backbone 'foundation' \(checkpoint sha256 000000000000…\), but .* builds 'foundation' \(checkpoint sha256 {sha[:12]}…\)"):
        inference.load(exported)


def test_a_run_records_its_backbone_and_refuses_another(trained, tmp_path):
    """The shared adapter's metadata records the backbone it was trained on: a run directory whose
    config.toml was edited to another backbone of the same shapes is refused, naming both files."""
    import shutil

    from feddat.runtime import load_tensors_and_metadata

    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    shared = run_dir / "feddat" / "shared_adapter.safetensors"
    assert load_tensors_and_metadata(shared)[1]["backbone_name"] == "vilt"
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace('name = "vilt"', 'name = "minivl"', 1))
    with pytest.raises(ValueError, match=r"shared_adapter.safetensors: the model was trained on backbone 'vilt', but .*run/config.toml builds 'minivl'"):
        inference.load(run_dir, "feddat", "count")


def test_a_failed_export_leaves_the_earlier_export_as_it_was(trained, tmp_path, monkeypatch):
    run_dir, _ = trained
    out = inference.export(run_dir, "feddat", "count", tmp_path / "export")
    before = listing(out)

    def disk_full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(inference, "write_text", disk_full)  # after the tensors are written
    with pytest.raises(OSError, match="No space left"):
        inference.export(run_dir, "feddat", "count", out, "personal")
    assert listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# ---- images read as evaluation read them; foundation LoRA exports; Flower runs ------------------

FOLDER_CLIENTS = {"alpha": ("red", "blue", "green"), "beta": ("one", "two"), "gamma": ("yes", "no", "maybe")}
FILE_SIDE = 48  # the image files' side: neither backbone.image_size (TINY_IMAGE) nor 128


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    """Three clients in the folder format (docs/guide/own-data.md), their images 48 px files."""
    from conftest import write_folder_clients

    return write_folder_clients(tmp_path_factory.mktemp("folder-clients"), FOLDER_CLIENTS, {"train": 8, "test": 6}, FILE_SIDE)


def folder_overrides(tiny_vilt_dir, root, out) -> dict:
    return {
        "backbone.name": "vilt", "backbone.path": tiny_vilt_dir, "backbone.image_size": TINY_IMAGE, "backbone.max_text_len": 12,
        "adapter.reduction_factor": 4, "data.benchmark": "folder", "data.root": str(root), "data.cache_dir": str(out / "cache"),
        "federation.rounds": 1, "federation.eval_every": 1, "train.batch_size": 8, "train.lr": 0.01, "run.methods": "feddat",
        "run.out_dir": str(out), "run.threads": 1, "run.precision": "fp32", "run.device": "cpu",
    }  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(tiny_vilt_dir, folder_root, tmp_path_factory):
    """FedDAT on the folder clients, read at backbone.image_size = 32 (not the default 128)."""
    out = tmp_path_factory.mktemp("folder-run")
    cfg = config_mod.load(None, {**folder_overrides(tiny_vilt_dir, folder_root, out), "run.name": "folder"})
    return run_experiment(cfg, log=lambda s: None), cfg


def test_predict_reads_image_files_as_the_runs_evaluation_read_them(folder_run, folder_root):
    """A folder run at backbone.image_size 32: `predict` on the image files gives the logits of
    the images the data loader read for evaluation (not the files read at 128 px), so its
    answers score what metrics.jsonl recorded."""
    from PIL import Image

    run_dir, cfg = folder_run
    split = {c.name: c.test for c in raw_clients(cfg)}["alpha"]  # the data loader's images
    assert split.images.shape[1:3] == (TINY_IMAGE, TINY_IMAGE)
    model = inference.load(run_dir, "feddat", "alpha", "personal")
    files = [folder_root / "alpha" / "img" / f"test{q.split()[-1].rstrip('?')}.png" for q in split.questions]  # 'what is object 3?': test3.png
    evaluated = model.logits(list(split.images), split.questions)
    assert torch.equal(model.logits(files, split.questions), evaluated)
    assert torch.equal(model.logits([Image.open(f) for f in files], split.questions), evaluated)  # PIL images: the same
    answers = [model.answers[i] for i in model.logits(files, split.questions).argmax(-1).tolist()]
    assert sum(a == b for a, b in zip(answers, split.answers)) / len(answers) == recorded(run_dir, "feddat", "alpha", "personal")


@pytest.fixture(scope="module")
def foundation_lora(tmp_path_factory):
    """fedavg_lora for one round on the default backbone (foundation: MiniLM with the packaged
    checkpoint's delta merged, its projector), 5 tiny function clients."""
    out = tmp_path_factory.mktemp("foundation-lora")
    cfg = config_mod.load(None, {
        "backbone.name": "foundation", "peft.lora_rank": 2, "data.benchmark": "function", "data.train_per_client": 4,
        "data.test_per_client": 4, "data.cache_dir": str(out / "cache"), "federation.rounds": 1, "federation.eval_every": 1,
        "train.batch_size": 4, "train.lr": 0.01, "run.methods": "fedavg_lora", "run.out_dir": str(out), "run.name": "lora",
        "run.threads": 1, "run.precision": "fp32",
    })  # fmt: skip
    run_dir = run_experiment(cfg, log=lambda s: None)
    return run_dir, {c.name: c.test for c in raw_clients(cfg)}


def test_a_foundation_lora_export_loads_with_peft_onto_the_base_it_was_trained_on(foundation_lora, tmp_path):
    """The loading snippet of docs/guide/using-a-model.md for a foundation LoRA export: peft onto the encoder that
    `feddat.lora_base` rebuilds from the checkpoint the export carries gives the evaluated
    logits; onto plain MiniLM (the base of the pretraining delta), it does not."""
    from peft import PeftModel
    from transformers import BertModel

    import feddat
    from feddat.backbones.minivl import minilm_path

    run_dir, test = foundation_lora
    split = test["count"]
    ours = inference.load(run_dir, "fedavg_lora", "count").logits(list(split.images), split.questions)
    exported = inference.export(run_dir, "fedavg_lora", "count", tmp_path / "lora")
    info = json.loads((exported / "feddat_model.json").read_text())
    assert info["lora_base"].startswith("foundation:") and (exported / "foundation-checkpoint" / "card.json").is_file()

    def logits(backbone) -> torch.Tensor:
        head = feddat.export_head(exported)
        ids, mask = backbone.tokenize(split.questions)
        with torch.no_grad():
            return head(backbone(backbone.encode_images(split.images), ids, mask))

    # the snippet of docs/guide/using-a-model.md
    backbone, encoder = feddat.lora_base(exported)
    PeftModel.from_pretrained(encoder, str(exported))  # puts the LoRA into backbone's encoder, in place
    assert torch.allclose(logits(backbone), ours, atol=1e-5)
    # the same LoRA on the plain MiniLM that `base_model_name_or_path` used to suggest is another model
    plain, _ = feddat.lora_base(exported)
    plain.encoder = PeftModel.from_pretrained(BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False, attn_implementation="eager"), str(exported)).base_model.model
    assert not torch.allclose(logits(plain), ours, atol=1e-3)
    # feddat's own loader uses the exported checkpoint, even where the run's backbone.path is gone
    assert torch.allclose(inference.load(exported).logits(list(split.images), split.questions), ours, atol=1e-6)


def test_a_flower_simulation_serves_predict_and_export_for_every_client(tiny_vilt_dir, folder_root, folder_run, tmp_path, capsys):
    """`feddat flower simulate --run.name flsim1`: the run directory gets the clients.json the
    embedded engine writes, and `predict` / `export` find every client's state where its node
    kept it (RUN_DIR/node-state/<client>); a node's state-dir elsewhere is given with --state-dir."""
    import shutil

    flags = [a for k, v in folder_overrides(tiny_vilt_dir, folder_root, tmp_path).items() for a in (f"--{k}", str(v))]
    assert main(["flower", "simulate", *flags, "--run.name", "flsim1"]) == 0
    run_dir = tmp_path / "flsim1"
    embedded, _ = folder_run
    assert json.loads((run_dir / "clients.json").read_text()) == json.loads((embedded / "clients.json").read_text())
    test = {c.name: c.test for c in raw_clients(config_mod.load(run_dir / "config.toml", {}))}
    capsys.readouterr()
    for client in FOLDER_CLIENTS:
        image = str(folder_root / client / "img" / "test0.png")
        assert main(["predict", str(run_dir), "--client", client, "--image", image, "--question", "what is object 0?", "--top", "1"]) == 0
        assert f"client '{client}'" in capsys.readouterr().out
        model = inference.load(run_dir, "feddat", client, "personal")
        assert model.deployed.sources["head"].parent == run_dir / "node-state" / client / "feddat"
        split = test[client]
        answers = [model.answers[i] for i in model.logits(list(split.images), split.questions).argmax(-1).tolist()]
        assert sum(a == b for a, b in zip(answers, split.answers)) / len(answers) == recorded(run_dir, "feddat", client, "personal")
        assert main(["export", str(run_dir), "--client", client, "--view", "personal", "--out", str(tmp_path / f"export-{client}")]) == 0
    # a deployed node keeps its state under its own state-dir (<state-dir>/<run name>/<method>), on its host
    host = tmp_path / "host-alpha"
    host.mkdir()
    shutil.move(run_dir / "node-state" / "alpha", host / "flsim1")
    args = ["predict", str(run_dir), "--client", "alpha", "--image", image, "--question", "q", "--top", "1"]
    assert main(args) == 1
    assert "--state-dir" in capsys.readouterr().err
    assert main([*args, "--state-dir", str(host)]) == 0
    assert main(["export", str(run_dir), "--client", "alpha", "--state-dir", str(host), "--out", str(tmp_path / "export-host")]) == 0
