"""The federated methods on an answer-decoder backbone (a tiny random BLIP): adapters in the text
encoder and the decoder, trained by the teacher-forced answer loss, FedDAT distilling token
distributions, evaluation by ranking the answer list by the decoder's likelihood."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_IMAGE, raw_split, tiny_config
from feddat.algorithms import METHODS, build_method
from feddat.answer_tokens import AnswerTokens
from feddat.data.clients import build_client
from feddat.engines.embedded import run_method
from feddat.engines.rundir import final_score_summary
from feddat.losses import answer_log_likelihood
from feddat.peft.model import AdaptedModel

pytestmark = pytest.mark.slow
DECODING = [name for name, m in METHODS.items() if m.decodes_answers]


def load_blip(folder):
    from feddat.backbones import build_backbone

    return build_backbone("blip", folder, image_size=TINY_IMAGE, max_text_len=12)


@pytest.fixture()
def blip(tiny_blip_dir):
    """A fresh backbone per test: an AdaptedModel puts its adapter sites into the backbone's blocks."""
    return load_blip(tiny_blip_dir)


@pytest.fixture(scope="module")
def blip_clients(tiny_blip_dir):
    specs = [("alpha", ("red", "blue", "green")), ("beta", ("one", "two"))]
    backbone = load_blip(tiny_blip_dir)
    return [build_client(name, raw_split(12, i, a), raw_split(6, 100 + i, a), backbone, 100, None) for i, (name, a) in enumerate(specs)]


def config(**overrides):
    return tiny_config(**{"backbone.name": "blip", "adapter.reduction_factor": 4, "federation.rounds": 2, **overrides})


def make(blip, method, **overrides):
    cfg = config(**overrides)
    model = AdaptedModel(blip, reduction_factor=4)
    return cfg, model, build_method(method, cfg, model, torch.device("cpu"))


def test_adapter_sites_cover_the_encoder_and_the_decoder(blip):
    model = AdaptedModel(blip, reduction_factor=4)
    assert blip.decoder_start is not None and 0 < blip.decoder_start < len(blip.blocks)
    assert sorted(map(int, model.sites)) == list(range(len(blip.blocks)))


@pytest.mark.parametrize("method", DECODING)
def test_every_decoding_method_trains_and_ranks_the_answer_list(blip, blip_clients, tmp_path, method):
    cfg = config(**{"run.methods": [method]})
    model = AdaptedModel(blip, reduction_factor=4)
    run_dir = tmp_path / method
    run_dir.mkdir()
    summary = run_method(method, cfg, model, blip_clients, run_dir, torch.device("cpu"), log=lambda s: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert {r["client"] for r in evals} == {"alpha", "beta"} and all(0.0 <= r["global"] <= 1.0 for r in evals)
    assert all(0.0 <= r["global-generated"] <= 1.0 for r in evals)  # and the open-ended answers' score
    assert ("personal" in evals[0]) == ("personal-generated" in evals[0]) == METHODS[method].personal
    assert "global-generated" in final_score_summary(records, method)  # summary.json's scores
    if method != "head_only":
        assert summary["local_steps"] > 0
    state_dir = run_dir / "state" / method
    for path in state_dir.glob("*.safetensors") if state_dir.exists() else ():
        from feddat.runtime import load_tensors

        assert not any(k.startswith("head.") for k in load_tensors(path))  # a decoder has no private head


def test_methods_that_need_a_classifier_head_refuse_a_decoder_naming_the_ones_that_run(blip):
    for name in ("moon", "fedrep", "fedavg_prompt"):
        with pytest.raises(ValueError, match=r"answer-decoder backbone.*feddat.*fedavg"):
            make(blip, name)


def test_ranking_scores_are_each_candidates_own_log_likelihood(blip, blip_clients):
    """The evaluation's batched ranking (every candidate of every question in one pass) gives
    each candidate the log-likelihood it gets decoded alone against its own question."""
    cfg, model, method = make(blip, "fedavg")
    client = blip_clients[0]
    model.load_adapter("shared", method.init_shared())
    index = torch.arange(3)
    head = method.new_head(client)
    with model.active("shared"), torch.no_grad():
        ranked = method.answer_scores(head, client.test, index)
        ids, mask = client.test.candidates
        for q in index.tolist():
            for a in range(len(ids)):
                batch = client.test.batch(torch.tensor([q]), torch.device("cpu"))
                alone = AnswerTokens(ids[a : a + 1], mask[a : a + 1], torch.tensor([0]))
                logits = model(*batch.inputs, alone)
                torch.testing.assert_close(ranked[q, a], answer_log_likelihood(logits, alone)[0], rtol=1e-4, atol=1e-4)
    assert ranked.shape == (3, client.num_answers)


@pytest.mark.parametrize("kd", ["mutual", "none"])
def test_fused_feddat_equals_the_reference_on_a_decoder(tiny_blip_dir, blip_clients, kd):
    """The batched student/teacher pass through encoder and decoder gives the reference
    schedule's losses and parameters: routing and fan-out work across the decoder's start."""
    results = {}
    for schedule in ("reference", "fused"):
        cfg, model, method = make(load_blip(tiny_blip_dir), "feddat", **{"feddat.schedule": schedule, "feddat.kd": kd})
        client = blip_clients[1]
        results[schedule] = method.client_update(method.init_shared(), method.init_client_state(client), client, round_=1)
    ref, fused = results["reference"], results["fused"]
    assert ref.metrics["kd_student"] > 0 if kd == "mutual" else ref.metrics["kd_student"] == 0
    for key in ref.metrics:
        assert fused.metrics[key] == pytest.approx(ref.metrics[key], rel=1e-4, abs=1e-6), key
    for k, v in ref.shared.items():
        torch.testing.assert_close(fused.shared[k], v, rtol=1e-4, atol=1e-6)
    for k, v in ref.state.items():
        torch.testing.assert_close(fused.state[k], v, rtol=1e-4, atol=1e-6)


def test_the_answer_loss_falls_as_fedavg_trains_the_adapters(blip, blip_clients):
    cfg, model, method = make(blip, "fedavg", **{"train.lr": 1e-2, "train.local_epochs": 4})
    client = blip_clients[0]
    shared, state, losses = method.init_shared(), method.init_client_state(client), []
    for round_ in range(1, 5):
        update = method.client_update(shared, state, client, round_)
        shared, state = update.shared, update.state
        losses.append(update.metrics["loss"])
    # untrained adapters leave it flat (at about ln(vocabulary) per answer token)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("view", ["global", "personal"])
def test_predict_and_export_serve_the_evaluated_decoder_ranked_and_generated(tiny_blip_dir, tmp_path, capsys, view):
    """A FedDAT run on BLIP from the CLI: the predictor's ranking of the client's answers scores
    what evaluation recorded for the view, its generated answers what the view's '-generated'
    score recorded; an export reloads to the same scores and answers; `feddat predict` prints both."""
    import numpy as np
    from PIL import Image

    from feddat import config as config_mod
    from feddat import inference
    from feddat.cli import main
    from feddat.data.sources import raw_clients
    from feddat.data.vqa_eval import normalise_answer

    flags = ["--backbone.name", "blip", "--backbone.path", tiny_blip_dir, "--backbone.image_size", str(TINY_IMAGE), "--backbone.max_text_len", "12",
             "--data.benchmark", "function", "--data.train_per_client", "8", "--data.test_per_client", "6", "--federation.rounds", "2",
             "--train.lr", "0.01", "--run.methods", "feddat", "--run.out_dir", str(tmp_path), "--run.name", "blip-run", "--run.threads", "1",
             "--run.precision", "fp32", "--data.cache_dir", str(tmp_path / "cache")]
    assert main(["run", *flags]) == 0
    run_dir = tmp_path / "blip-run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    client = "count"
    final = [r for r in records if r["kind"] == "eval" and r["client"] == client][-1]
    split = {c.name: c.test for c in raw_clients(config_mod.load(run_dir / "config.toml", {}))}[client]
    model = inference.load(run_dir, "feddat", client, view)
    scores = model.logits(list(split.images), split.questions)
    ranked = [model.answers[i] for i in scores.argmax(-1).tolist()]
    assert sum(a == b for a, b in zip(ranked, split.answers)) / len(ranked) == final[view]
    said = model.generate(list(split.images), split.questions)
    assert sum(normalise_answer(a) == normalise_answer(b) for a, b in zip(said, split.answers)) / len(said) == final[f"{view}-generated"]
    exported = inference.export(run_dir, "feddat", client, tmp_path / "export", view)
    again = inference.load(exported)
    assert torch.equal(again.logits(list(split.images), split.questions), scores) and again.generate(list(split.images), split.questions) == said
    Image.fromarray(np.asarray(split.images[0])).save(tmp_path / "q.png")
    capsys.readouterr()
    assert main(["predict", str(exported), "--image", str(tmp_path / "q.png"), "--question", split.questions[0], "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "answer decoder" in out and f"generated: {said[0]}" in out and "  2. " in out


def test_an_answer_longer_than_the_decoder_reads_is_refused_naming_the_client_and_the_setting(tiny_blip_dir):
    from feddat.backbones import build_backbone
    from feddat.data.types import DataError

    backbone = build_backbone("blip", tiny_blip_dir, image_size=TINY_IMAGE, max_text_len=12, max_answer_len=5)
    long = ("a very long answer indeed", "no")
    with pytest.raises(DataError, match=r"client 'wordy'.*'a very long answer indeed' is 7 tokens.*backbone.max_answer_len = 5"):
        build_client("wordy", raw_split(6, 0, long), raw_split(4, 1, long), backbone, 100, None)
    assert build_client("terse", raw_split(6, 0, ("yes", "no")), raw_split(4, 1, ("yes", "no")), backbone, 100, None).train.candidates[0].shape == (2, 5)


def test_generated_answers_run_through_the_adapted_model_as_the_plain_loops_greedy_decoding(blip, blip_clients, tiny_blip_dir):
    """With no adapter active the method's generation is blip.greedy_answer's (checked against
    HF's generate in test_blip.py); with the adapters active it decodes through them."""
    from feddat.backbones.blip import greedy_answer

    cfg, model, method = make(blip, "fedavg", **{"backbone.max_answer_len": 6})
    split, index = blip_clients[0].test, torch.arange(4)
    features, ids, mask = split.batch(index, torch.device("cpu")).inputs
    with model.active():
        bare = method.generate(split, index)
    plain = load_blip(tiny_blip_dir)  # the same weights without adapter sites
    assert bare == plain.decode_answers(greedy_answer(plain, features, ids, mask, 5))
    shared = {k: v * 50 for k, v in method.init_shared().items()}  # adapters large enough to change the answers
    model.load_adapter("shared", shared)
    with model.active("shared"):
        adapted = method.generate(split, index)
    assert adapted != bare and any(bare), (bare, adapted)


def test_open_ended_answers_are_scored_by_the_official_vqa_rules(blip_clients):
    """Free text against annotators: VQA accuracy after the official processing ('two' is '2':
    one annotator of ten gives it, 0.3); against one answer: exact match after the processing."""
    import dataclasses

    split = blip_clients[0].test
    one = dataclasses.replace(split, answer_texts=[["Yes"], ["red"]])
    assert one.score_generated(["yes.", "blue"], torch.arange(2)).tolist() == [1.0, 0.0]
    ten = dataclasses.replace(split, answer_texts=[["2"] + ["3"] * 9, ["3"] * 10], accuracy=torch.zeros(2, 1, dtype=torch.float64))
    assert ten.score_generated(["two", "3"], torch.arange(2)).tolist() == pytest.approx([0.3, 1.0])


class Interrupted(Exception):
    pass


def test_an_interrupted_decoder_run_resumes_to_the_uninterrupted_runs_numbers_bit_for_bit(tiny_blip_dir, tmp_path):
    from feddat.cli import main
    from feddat.config import load
    from feddat.engines.runner import run_experiment
    from feddat.runtime import load_tensors

    def flags(name):
        return {"backbone.name": "blip", "backbone.path": tiny_blip_dir, "backbone.image_size": str(TINY_IMAGE), "backbone.max_text_len": "12",
                "adapter.reduction_factor": "4", "data.train_per_client": "8", "data.test_per_client": "4", "data.cache_dir": str(tmp_path / "cache"),
                "federation.rounds": "3", "federation.fraction": "0.6", "run.methods": "feddat", "run.out_dir": str(tmp_path), "run.name": name,
                "run.threads": "1", "run.progress": "lines"}

    def results(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return sorted(lines), load_tensors(run_dir / "feddat" / "shared_adapter.safetensors")

    run_experiment(load(None, flags("straight")), log=lambda line: None)

    def stop_after_round_2(line):
        if "[feddat] round 2/" in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_experiment(load(None, flags("stopped")), log=stop_after_round_2)
    assert json.loads((tmp_path / "stopped" / "checkpoint" / "feddat" / "progress.json").read_text())["round"] == 2
    assert main(["run", "--resume", str(tmp_path / "stopped")]) == 0
    (straight_lines, straight_adapter), (resumed_lines, resumed_adapter) = results(tmp_path / "straight"), results(tmp_path / "stopped")
    assert json.loads((tmp_path / "stopped" / "checkpoint" / "feddat" / "progress.json").read_text())["round"] == 3
    assert resumed_lines == straight_lines
    assert all(torch.equal(resumed_adapter[k], straight_adapter[k]) for k in straight_adapter)


@pytest.fixture(scope="module")
def blip_lora_run(tiny_blip_dir, tmp_path_factory):
    """One tiny run of the two LoRA methods on BLIP (2 rounds, function clients)."""
    from feddat import config as config_mod
    from feddat.data.sources import raw_clients
    from feddat.engines.runner import run_experiment

    out = tmp_path_factory.mktemp("blip-lora")
    cfg = config_mod.load(None, {
        "backbone.name": "blip", "backbone.path": tiny_blip_dir, "backbone.image_size": TINY_IMAGE, "backbone.max_text_len": 12,
        "peft.lora_rank": 2, "data.benchmark": "function", "data.train_per_client": 8, "data.test_per_client": 4,
        "data.cache_dir": str(out / "cache"), "federation.rounds": 2, "federation.eval_every": 2, "train.batch_size": 8, "train.lr": 0.01,
        "run.methods": "fedavg_lora,feddat_lora", "run.out_dir": str(out), "run.name": "tiny", "run.threads": 1, "run.precision": "fp32",
    })  # fmt: skip
    run_dir = run_experiment(cfg, log=lambda s: None)
    return run_dir, {c.name: c.test for c in raw_clients(cfg)}


@torch.no_grad()
def hf_answer_logits(hf, features, ids, mask, answer_ids, answer_mask):
    """BlipForQuestionAnswering's teacher-forced decoder logits (its forward returns none) on
    the image embeddings `features` (test_blip.py checks they are its vision model's output)."""
    image_mask = torch.ones(features.shape[:2], dtype=torch.long)
    question = hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=features, encoder_attention_mask=image_mask).last_hidden_state
    return hf.text_decoder(input_ids=answer_ids, attention_mask=answer_mask, encoder_hidden_states=question, encoder_attention_mask=mask).logits


@pytest.mark.parametrize("method, view, sets", [("fedavg_lora", "global", 1), ("feddat_lora", "global", 1), ("feddat_lora", "personal", 2)])
def test_blip_lora_exports_in_peft_format_to_the_evaluated_decoder(blip_lora_run, tiny_blip_dir, tmp_path, method, view, sets):
    """A LoRA export of BLIP names BlipForQuestionAnswering's own module paths (the text
    encoder's and the text decoder's layers), reloads to the evaluated model's scores and
    answers, and peft puts it onto a fresh transformers BLIP whose decoder logits are feddat's."""
    from peft import PeftModel
    from transformers import BlipForQuestionAnswering

    from feddat import inference
    from feddat.backbones.base import trim_padding

    run_dir, test = blip_lora_run
    split, client = test["count"], "count"
    ours = inference.load(run_dir, method, client, view)
    scores, said = ours.logits(list(split.images), split.questions), ours.generate(list(split.images), split.questions)
    exported = inference.export(run_dir, method, client, tmp_path / "lora", view)
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["r"] == 2 * sets and config["base_model_name_or_path"] == tiny_blip_dir  # n sets of rank 2 stacked
    halves = {t.split(".layer.")[0] for t in config["target_modules"]}
    assert halves == {"text_encoder.encoder", "text_decoder.bert.encoder"}, config["target_modules"]
    again = inference.load(exported)
    assert torch.equal(again.logits(list(split.images), split.questions), scores) and again.generate(list(split.images), split.questions) == said

    # The ecosystem's path: peft on a fresh transformers BLIP, against feddat's adapted model,
    # on one unpadded question (HF's layers attend to a question's padding, blip.run_block).
    hf = PeftModel.from_pretrained(BlipForQuestionAnswering.from_pretrained(tiny_blip_dir, local_files_only=True), str(exported)).eval()
    backbone = ours.backbone
    features = backbone.encode_images(split.images[:1])
    ids, mask = trim_padding(*backbone.tokenize(split.questions[:1]))
    answer_ids, answer_mask = trim_padding(*backbone.tokenize_answers([split.answers[0]]))
    assert mask.all() and answer_mask.all()
    with ours.method.model.active(*ours.deployed.active, **ours.deployed.path), torch.no_grad():
        feddat_logits = ours.method.model(features, ids, mask, AnswerTokens(answer_ids, answer_mask, torch.tensor([0])))
    theirs = hf_answer_logits(hf.base_model.model, features, ids, mask, answer_ids, answer_mask)
    torch.testing.assert_close(theirs, feddat_logits, rtol=1e-4, atol=1e-5)
    with hf.disable_adapter():  # and the LoRA is part of what was compared
        assert not torch.allclose(hf_answer_logits(hf.base_model.model, features, ids, mask, answer_ids, answer_mask), theirs, atol=1e-4)


def test_evaluation_batches_of_a_decoder_keep_every_candidates_logits_near_256_mib(blip, blip_clients):
    """Ranking decodes every candidate of every question at once: the eval batch shrinks so that
    questions x answers x tokens x vocabulary float32 logits stay near 256 MiB."""
    cfg, model, method = make(blip, "fedavg", **{"train.eval_batch_size": 10_000})
    split = blip_clients[0].test
    answers, tokens = split.candidates[0].shape
    size = method.eval_batch_size(split)
    assert blip.vocab_size == len(blip.tokenizer)
    assert size * answers * tokens * blip.vocab_size * 4 <= 256 * 2**20 < (size + 1) * answers * tokens * blip.vocab_size * 4
