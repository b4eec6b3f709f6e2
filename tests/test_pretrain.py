"""`feddat pretrain`: the caption corpus is true to its scenes, training learns and is
deterministic, a run resumes to the same checkpoint, and the checkpoint loads as a backbone
that computes what pretraining computed — or is refused, with the file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from feddat.backbones.foundation import CARD_FILE, TENSORS_FILE, CheckpointError, Foundation, load_checkpoint
from feddat.config import PretrainConfig
from feddat.data.synthetic import MIN_GAP, Scene, SceneObject
from feddat.pretrain import corpus as C

SIDE = 64  # a 2 x 2 grid of image tokens


def tiny_recipe(tmp_path: Path, **kw) -> PretrainConfig:
    p = PretrainConfig(corpus_size=96, eval_size=24, steps=24, batch_size=16, image_size=SIDE, lora_rank=4, log_every=4, save_every=8,
                       lr=2e-3, threads=2, out=str(tmp_path / "ckpt"), cache_dir=str(tmp_path / "cache"))
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------


def scene(*objects) -> Scene:
    return Scene(tuple(SceneObject(*o) for o in objects))


def test_hand_built_scene_reads_as_english():
    s = scene(("circle", "red", "large", 0.2, 0.5), ("heart", "pink", "small", 0.8, 0.52))
    listing = C.Listing((C.Mention("red", "circle", "large"), C.Mention("pink", "heart")), "x")
    assert C.caption_of(listing).text == "from left to right : a large red circle and a pink heart ."
    assert listing.holds(s) and not C.Listing(listing.mentions[::-1], "x").holds(s)
    rel = C.Relation(C.Mention("red", "circle"), "left", C.Mention("pink", "heart"))
    assert C.caption_of(rel).text == "the red circle is to the left of the pink heart ."
    assert rel.holds(s) and not C.Relation(rel.a, "right", rel.b).holds(s)
    # 0.02 apart vertically: neither above nor below is clear
    assert not C.Relation(rel.a, "above", rel.b).holds(s) and not C.Relation(rel.a, "below", rel.b).holds(s)
    assert C.caption_of(C.Count(2)).text == "there are two objects ." and C.Count(2).holds(s)
    assert C.caption_of(C.Count(0, "shape", "star")).text == "there are no stars ." and C.Count(0, "shape", "star").holds(s)
    assert C.caption_of(C.Count(1, "colour", "pink")).text == "there is one pink object ."


def test_every_caption_is_true_and_every_negative_false():
    scenes = C.corpus_scenes(300, seed=3)
    kinds, changed = set(), set()
    for i, s in enumerate(scenes):
        rng = C.caption_rng(3, 0, i)
        cap = C.true_caption(s, rng)
        assert cap.fact.holds(s), cap.text
        kinds.add(cap.kind)
        hard = C.hard_negative(s, cap, rng)
        if hard is not None:
            assert not hard.fact.holds(s), (cap.text, hard.text)
            # exactly the changed role differs; the sentence keeps its form
            differ = [(a, b) for a, b in zip(cap.words, hard.words) if a != b]
            assert differ and all(b[1] in (hard.changed, "") for _, b in differ), (cap.text, hard.text)
            changed.add(hard.changed)
        easy = C.easy_negative(s, scenes[:8], rng)
        assert easy is None or not easy.fact.holds(s)
    assert kinds == set(C.KINDS) and changed == set(C.ROLES)


def test_corpus_is_broader_than_the_benchmarks_and_deterministic():
    from feddat.data.synthetic import COLOURS, SHAPES

    scenes = C.corpus_scenes(400, seed=5)
    assert scenes == C.corpus_scenes(400, seed=5) and scenes != C.corpus_scenes(400, seed=6)
    shapes = {o.shape for s in scenes for o in s.objects}
    colours = {o.colour for s in scenes for o in s.objects}
    assert shapes - set(SHAPES) and colours - set(COLOURS)  # words no benchmark asks about
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    images = C.render_corpus(scenes[:4], ["flat", "photo"], 5, SIDE)
    assert np.array_equal(images, C.render_corpus(scenes[:4], ["flat", "photo"], 5, SIDE))
    # every word a caption can hold is in the vocabulary the MLM decoder is built from
    words = {w for i, s in enumerate(scenes) for w, _ in C.true_caption(s, C.caption_rng(5, 1, i)).words}
    assert words <= set(C.vocabulary())


def test_clear_gap_is_the_generators_own():
    s = scene(("circle", "red", "large", 0.3, 0.3), ("star", "blue", "small", 0.3 + MIN_GAP * 0.9, 0.3 + MIN_GAP * 1.1))
    assert not C.Relation(C.Mention("red", "circle"), "left", C.Mention("blue", "star")).holds(s)
    assert C.Relation(C.Mention("red", "circle"), "above", C.Mention("blue", "star")).holds(s)


def test_a_negative_never_leaks_through_a_mask():
    """Matching examples are never masked, masked-word examples are always true captions."""
    from feddat.pretrain.data import IGNORE, Batcher, Corpus, Schedule, Tokens
    from transformers import AutoTokenizer

    from feddat.backbones.minivl import minilm_path

    tokens = Tokens(AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True), C.vocabulary(), 32)
    corpus = Corpus(torch.zeros(64, 4, 8, dtype=torch.float16), scenes=C.corpus_scenes(64, seed=1))
    batcher = Batcher(corpus, tokens, seed=0, batch_size=16, mlm_fraction=0.5, mask_prob=0.4, schedule=Schedule(10, 0.0, 1.0, 0.0))
    seen_negative = False
    for step in range(10):
        b = batcher.batch(step)
        mlm_rows = (b.mlm_labels != IGNORE).any(1)
        assert mlm_rows[:8].all() and not mlm_rows[8:].any()
        assert (b.itm_labels[:8] == IGNORE).all() and set(b.itm_labels[8:].tolist()) <= {0, 1}
        assert not (b.input_ids[8:] == tokens.mask).any()
        seen_negative |= bool((b.itm_labels == 0).any())
    assert seen_negative
    assert np.array_equal(batcher.indices(3), batcher.indices(3)) and not np.array_equal(batcher.indices(3), batcher.indices(4))


# ---------------------------------------------------------------------------
# Training, determinism, resume
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny pretraining run, shared by the tests below."""
    from feddat.pretrain.train import pretrain

    tmp = tmp_path_factory.mktemp("pretrain")
    recipe = tiny_recipe(tmp)
    pretrain(recipe, log=lambda _: None)
    return recipe, Path(recipe.out)


def test_loss_falls_and_the_card_says_what_was_done(trained):
    recipe, out = trained
    curve = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == list(range(4, 25, 4))
    assert curve[-1]["mlm"] < 0.8 * curve[0]["mlm"], curve
    card = json.loads((out / CARD_FILE).read_text())
    assert card["recipe"]["steps"] == 24 and card["corpus"]["kind"] == "synthetic" and card["seed"] == 0
    assert card["losses"] == curve and card["cost"]["threads"] == 2
    held = card["heldout"]["pretraining styles"]
    assert set(held["mlm"]) <= set(C.ROLES) and held["mlm"] and "match" in held["itm"] and set(held["mlm_shuffled"]) == set(held["mlm"])
    assert set(card["heldout"]) == {"pretraining styles", "other styles"}
    assert card["rebuild"] == f"feddat pretrain --config {out / 'recipe.toml'} --pretrain.out DIR"
    import tomllib

    assert tomllib.loads((out / "recipe.toml").read_text())["pretrain"]["steps"] == 24


def test_precision_auto_is_resolved_and_the_recipe_records_what_ran(trained):
    """pretrain.precision auto runs bf16 only where the CPU has it natively (emulated bf16 is many
    times slower); recipe.toml records the precision that ran, so its rebuild runs the same."""
    import tomllib

    from feddat.pretrain.train import resolved_precision
    from feddat.runtime import native_bf16

    assert PretrainConfig().precision == "auto"
    assert resolved_precision("auto") == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert resolved_precision("bf16") == "bf16" and resolved_precision("fp32") == "fp32"
    recipe, out = trained  # the tiny recipe leaves precision at its default, auto
    assert recipe.precision == "auto"
    assert tomllib.loads((out / "recipe.toml").read_text())["pretrain"]["precision"] == resolved_precision("auto")


def test_the_cards_rebuild_command_makes_the_same_checkpoint_bit_for_bit(trained, tmp_path):
    from feddat.cli import main
    from feddat.pretrain.train import pretrain

    recipe, out = trained
    command = json.loads((out / CARD_FILE).read_text())["rebuild"].split()
    again = tmp_path / "again"
    assert command[:2] == ["feddat", "pretrain"]
    assert main([*command[1:-1], str(again), "--pretrain.cache_dir", recipe.cache_dir]) == 0
    assert (again / TENSORS_FILE).read_bytes() == (out / TENSORS_FILE).read_bytes()
    other = tiny_recipe(tmp_path, cache_dir=recipe.cache_dir, seed=1, out=str(tmp_path / "seed1"))
    pretrain(other, log=lambda _: None)
    assert (Path(other.out) / TENSORS_FILE).read_bytes() != (out / TENSORS_FILE).read_bytes()


def test_interrupted_run_resumes_to_the_same_checkpoint(trained, tmp_path, monkeypatch):
    from feddat.pretrain import train

    recipe, out = trained
    cut = tiny_recipe(tmp_path, cache_dir=recipe.cache_dir)
    real_step = train.train_step

    def dies_at_step_13(setup, opt, step, p):
        if step == 13:  # after the step-8 commit, before the step-16 one
            raise KeyboardInterrupt
        return real_step(setup, opt, step, p)

    monkeypatch.setattr(train, "train_step", dies_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train.pretrain(cut, log=lambda _: None)
    assert json.loads((Path(cut.out) / "state" / "progress.json").read_text())["step"] == 8
    with pytest.raises(FileExistsError, match="--resume"):
        train.pretrain(cut, log=lambda _: None)
    monkeypatch.setattr(train, "train_step", real_step)
    state = Path(cut.out) / "state"
    progress = json.loads((state / "progress.json").read_text())
    assert sorted(p.name for p in state.glob("*.safetensors")) == [progress["tensors"]]  # the committed step's only
    tensors = state / progress["tensors"]
    intact = tensors.read_bytes()
    tensors.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(train.StateError, match=progress["tensors"]):
        train.pretrain(cut, resume=True, log=lambda _: None)
    tensors.write_bytes(intact)
    with open(Path(cut.out) / "log.jsonl", "a") as f:
        f.write('{"step": 12, "lo')  # a line the crash cut short
    from feddat.cli import main

    assert main(["pretrain", "--resume", cut.out]) == 0  # its own recipe and thread count, from progress.json
    assert (Path(cut.out) / TENSORS_FILE).read_bytes() == (out / TENSORS_FILE).read_bytes()
    assert (Path(cut.out) / "log.jsonl").read_text().count('"step": 8,') == 1


# ---------------------------------------------------------------------------
# The checkpoint as a backbone
# ---------------------------------------------------------------------------


def test_checkpoint_loads_as_the_backbone_pretraining_trained(trained):
    """The backbone (LoRA merged, projector, tower) computes the pretrained model's [CLS] state."""
    from feddat.pretrain.train import build, load_state

    recipe, out = trained
    setup = build(recipe, log=lambda _: None)
    from feddat.pretrain.train import optimiser

    load_state(out, setup, optimiser(setup.model, recipe))
    setup.model.eval()
    backbone = Foundation(str(out), image_size=SIDE, max_text_len=16)
    scenes = C.corpus_scenes(4, seed=11)
    images = C.render_corpus(scenes, ["photo"], 11, SIDE)
    ids, mask = backbone.tokenize(["a red circle .", "there are two objects .", "what shape is the red object?", "the blue star is above the green square ."])
    from feddat.backbones.foundation import cell_features

    with torch.no_grad():
        want = setup.model(cell_features(backbone.tower, images, SIDE), ids, mask)[:, 0]
        got = backbone(backbone.encode_images(images).float(), ids, mask)
    assert got.shape == (4, backbone.hidden_size)
    assert torch.allclose(got, want, atol=2e-2), (got - want).abs().max()  # fp16 image-token cache
    assert backbone.checkpoint_hash[:16] in backbone.cache_key()
    assert all(not p.requires_grad for p in backbone.parameters())


def test_corrupt_or_mismatched_checkpoints_are_refused_with_the_file_named(trained, tmp_path):
    _, out = trained

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(out, dst, ignore=shutil.ignore_patterns("state"))
        return dst

    flipped = copy("flipped")
    data = bytearray((flipped / TENSORS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (flipped / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{flipped / TENSORS_FILE}.*corrupt"):
        load_checkpoint(flipped)

    no_card = copy("nocard")
    (no_card / CARD_FILE).unlink()
    with pytest.raises(CheckpointError, match="card.json is missing"):
        Foundation(str(no_card), image_size=SIDE)

    other_base = copy("otherbase")
    card = json.loads((other_base / CARD_FILE).read_text())
    card["text_encoder"]["sha256"] = "0" * 64
    (other_base / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=rf"{other_base}.*pretrained on a text_encoder"):
        Foundation(str(other_base), image_size=SIDE)

    wrong_rank = copy("rank")
    card = json.loads((wrong_rank / CARD_FILE).read_text())
    card["lora"]["rank"] = 8
    (wrong_rank / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=rf"{wrong_rank / TENSORS_FILE}.*LoRA tensors do not fit"):
        Foundation(str(wrong_rank), image_size=SIDE)

    with pytest.raises(CheckpointError, match="pretrained at 64 px"):
        Foundation(str(out), image_size=128)
    with pytest.raises(CheckpointError, match="is not a folder"):
        Foundation(str(tmp_path / "nowhere"), image_size=SIDE)


# ---------------------------------------------------------------------------
# Your own data, your own encoders
# ---------------------------------------------------------------------------


def write_pairs(root: Path, n: int) -> Path:
    from PIL import Image

    scenes = C.corpus_scenes(n, seed=21)
    images = C.render_corpus(scenes, ["flat"], 21, SIDE)
    (root / "img").mkdir(parents=True)
    lines = []
    for i, (s, image) in enumerate(zip(scenes, images)):
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": C.true_caption(s, C.caption_rng(21, 0, i)).text}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_folder_corpus_pretrains_and_bad_records_name_file_and_line(tmp_path):
    from feddat.data.clients import DataError
    from feddat.pretrain.train import pretrain

    root = write_pairs(tmp_path / "pairs", n=30)
    recipe = tiny_recipe(tmp_path, corpus="folder", root=str(root), steps=4, save_every=2)
    pretrain(recipe, log=lambda _: None)
    card = json.loads((Path(recipe.out) / CARD_FILE).read_text())
    assert card["corpus"]["kind"] == "folder" and card["corpus"]["size"] == 27  # 3 pairs held out
    held = card["heldout"]["held-out pairs"]
    assert set(held["mlm"]) == {"word"} and set(held["itm"]) == {"match", "swap"}
    assert Foundation(recipe.out, image_size=SIDE).encode_images(np.zeros((1, SIDE, SIDE, 3), np.uint8)).shape == (1, 4, 384)

    lines = (root / "captions.jsonl").read_text().splitlines()
    (root / "captions.jsonl").write_text("\n".join(lines[:3] + ['{"image": "img/3.png"}'] + lines[4:]) + "\n")
    with pytest.raises(DataError, match=r"captions.jsonl:4: a record needs non-empty string fields 'image' and 'caption'"):
        pretrain(tiny_recipe(tmp_path, corpus="folder", root=str(root), out=str(tmp_path / "b")), log=lambda _: None)
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "img" / "5.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"captions.jsonl:6: image file .*5.png is corrupt"):
        pretrain(tiny_recipe(tmp_path, corpus="folder", root=str(root), out=str(tmp_path / "c"), cache_dir=str(tmp_path / "c2")), log=lambda _: None)


def test_a_hugging_face_text_encoder_and_vision_tower_compose_a_foundation(tmp_path):
    """Small random BERT + ViT saved to folders (the real loading path, offline)."""
    from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTModel

    from feddat.backbones.minivl import minilm_path
    from feddat.pretrain.train import pretrain

    torch.manual_seed(0)
    text, vision = tmp_path / "bert", tmp_path / "vit"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=160)).save_pretrained(text)
    AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True).save_pretrained(text)
    ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, image_size=32, patch_size=8)).save_pretrained(vision)
    recipe = tiny_recipe(tmp_path, text_encoder=str(text), vision_tower=str(vision), steps=6, eval_size=8)
    pretrain(recipe, log=lambda _: None)
    from feddat.backbones import build_backbone
    from feddat.peft.model import AdaptedModel

    backbone = build_backbone("foundation", recipe.out, image_size=SIDE, max_text_len=12)
    model = AdaptedModel(backbone, reduction_factor=4)
    model.add_adapter("shared")
    feats = backbone.encode_images(np.zeros((2, SIDE, SIDE, 3), np.uint8))
    assert feats.shape == (2, 4, 32)  # 2 x 2 cells, hidden 32; 4 x 4 ViT patches -> 2 x 2 sub-cells of 24 each
    ids, mask = backbone.tokenize(["a red circle", "two objects"])
    with model.active("shared"):
        assert model(feats, ids, mask).shape == (2, 32)
    card = json.loads((Path(recipe.out) / CARD_FILE).read_text())
    assert card["vision_tower"]["feature_dim"] == 96 and card["text_encoder"]["hidden"] == 32


# ---------------------------------------------------------------------------
# Resume on changed data, partial writes, log means; bad cards, encoders, captions
# ---------------------------------------------------------------------------


def interrupted(recipe: PretrainConfig, monkeypatch, at: int) -> Path:
    """Run `recipe` until step `at` fails (after the commits before it); its output folder."""
    from feddat.pretrain import train

    real_step = train.train_step

    def dies(setup, opt, step, p):
        if step == at:
            raise KeyboardInterrupt
        return real_step(setup, opt, step, p)

    monkeypatch.setattr(train, "train_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train.pretrain(recipe, log=lambda _: None)
    monkeypatch.setattr(train, "train_step", real_step)
    return Path(recipe.out)


def test_resume_refuses_a_corpus_or_encoder_that_changed_since_the_run_started(tmp_path, monkeypatch, capsys):
    from feddat.cli import main
    from feddat.data.clients import DataError
    from feddat.pretrain.train import pretrain

    root = write_pairs(tmp_path / "pairs", n=24)
    recipe = tiny_recipe(tmp_path, corpus="folder", root=str(root), steps=4, save_every=2, log_every=2, eval_size=0)
    out = interrupted(recipe, monkeypatch, at=3)
    progress_path = out / "state" / "progress.json"
    progress = json.loads(progress_path.read_text())
    assert progress["step"] == 2 and progress["data"]["corpus"]["kind"] == "folder"

    # the same file names, other pictures: refused before anything is encoded or trained
    original = (root / "img" / "0.png").read_bytes()
    (root / "img" / "0.png").write_bytes((root / "img" / "1.png").read_bytes())
    with pytest.raises(DataError, match=rf"{progress_path}: the data changed.*captions or images under {root}"):
        pretrain(recipe, resume=True, log=lambda _: None)
    assert main(["pretrain", "--resume", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the data changed" in err and "Traceback" not in err
    (root / "img" / "0.png").write_bytes(original)

    # another vocabulary: named as changed data, not as tensors of the wrong shape
    captions = (root / "captions.jsonl").read_text()
    (root / "captions.jsonl").write_text(captions.replace('"caption": "', '"caption": "zebra giraffe ', 1))
    with pytest.raises(DataError, match=r"the data changed.*captions or images"):
        pretrain(recipe, resume=True, log=lambda _: None)
    (root / "captions.jsonl").write_text(captions)

    # base weights other than the run's (as another copy of the encoder would give)
    edited = dict(progress, data={**progress["data"], "text_encoder": "0" * 64})
    progress_path.write_text(json.dumps(edited))
    with pytest.raises(DataError, match=r"the data changed.*text encoder's weights \(000000000000… then"):
        pretrain(recipe, resume=True, log=lambda _: None)

    # a progress.json from before fingerprints: resumed, with a warning that it cannot check
    progress_path.write_text(json.dumps({k: v for k, v in progress.items() if k != "data"}))
    lines = []
    pretrain(recipe, resume=True, log=lines.append)
    assert any("cannot check" in line for line in lines) and (out / TENSORS_FILE).is_file()


def test_resume_cleans_partial_writes_and_logs_the_means_an_uninterrupted_run_logs(trained, tmp_path, monkeypatch):
    """log_every 3 does not divide save_every 4: the steps logged after a commit are averaged
    with the ones before it, as without the interruption; temporary files a kill left go."""
    from feddat.cli import main
    from feddat.pretrain.train import pretrain

    recipe, _ = trained
    kw = dict(cache_dir=recipe.cache_dir, steps=12, log_every=3, save_every=4, eval_size=0)
    whole = tiny_recipe(tmp_path, out=str(tmp_path / "whole"), **kw)
    pretrain(whole, log=lambda _: None)
    out = interrupted(tiny_recipe(tmp_path, out=str(tmp_path / "cut"), **kw), monkeypatch, at=6)  # committed at 4, logged at 3 and 6
    assert json.loads((out / "state" / "progress.json").read_text())["step"] == 4
    stray = [out / ".foundation.safetensors.0123456789ab.tmp", out / "state" / ".state-0000008.safetensors.a1b2c3d4e5f6.tmp", out / "state" / ".progress.json.ffffffffffff.tmp"]
    for path in stray:
        path.write_bytes(b"half a file")
    (out / ".keep").write_text("not ours")
    assert main(["pretrain", "--resume", str(out)]) == 0
    assert not any(path.exists() for path in stray) and (out / ".keep").exists()
    assert (out / TENSORS_FILE).read_bytes() == (Path(whole.out) / TENSORS_FILE).read_bytes()
    strip = lambda folder: [{k: v for k, v in r.items() if k != "s_per_step"} for r in json.loads((folder / CARD_FILE).read_text())["losses"]]  # noqa: E731
    assert [r["step"] for r in strip(out)] == [3, 6, 9, 12]
    assert strip(out) == strip(Path(whole.out))


def test_card_with_missing_or_mistyped_keys_is_refused_naming_card_and_key(trained, tmp_path):
    _, out = trained

    def edited(name: str, edit) -> Path:
        dst = tmp_path / name
        shutil.copytree(out, dst, ignore=shutil.ignore_patterns("state"))
        card = json.loads((dst / CARD_FILE).read_text())
        edit(card)
        (dst / CARD_FILE).write_text(json.dumps(card))
        return dst

    cases = {
        "tune": (lambda c: c.pop("tune"), r"key 'tune' is missing"),
        "image_size": (lambda c: c.pop("image_size"), r"key 'image_size' is missing"),
        "text_encoder": (lambda c: c.update(text_encoder="minilm"), r"'text_encoder' must be an object"),
        "vision_tower.feature_dim": (lambda c: c["vision_tower"].update(feature_dim="928"), r"'vision_tower.feature_dim' must be a positive integer"),
        "lora.rank": (lambda c: c["lora"].pop("rank"), r"key 'lora.rank' is missing"),
        "tune-kind": (lambda c: c.update(tune="qlora"), r"'tune' must be 'lora' or 'full'"),
    }
    for name, (edit, message) in cases.items():
        folder = edited(name, edit)
        with pytest.raises(CheckpointError, match=rf"{folder / CARD_FILE}: {message}"):
            Foundation(str(folder), image_size=SIDE, max_text_len=16)


def test_encoder_folders_of_the_wrong_kind_or_missing_are_named(tmp_path, monkeypatch):
    """A CLIP folder's vision model is the tower; a text model as vision tower, or a folder that
    is not there, is refused naming it (not with Hugging Face's hub or forward-pass messages)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from feddat.backbones.foundation import cell_features, load_text_encoder, load_vision_tower
    from feddat.backbones.minivl import minilm_path

    torch.manual_seed(0)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8, projection_dim=8)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=8)
    CLIPModel(CLIPConfig(text_config=CLIPTextConfig(**text).to_dict(), vision_config=CLIPVisionConfig(**vision).to_dict(), projection_dim=8)).save_pretrained(tmp_path / "clip")
    tower, digest = load_vision_tower(str(tmp_path / "clip"))
    assert cell_features(tower, np.zeros((2, SIDE, SIDE, 3), np.uint8), SIDE).shape == (2, 4, 16 * 4)  # 4 x 4 patches -> 2 x 2 cells of 2 x 2 sub-cells
    assert len(digest) == 64

    with pytest.raises(CheckpointError, match=rf"vision tower {minilm_path()}: .*model_type 'bert'.* no image_size and patch_size"):
        load_vision_tower(str(minilm_path()))
    with pytest.raises(CheckpointError, match=rf"^text encoder folder {tmp_path / 'no' / 'bert'} does not exist$"):
        load_text_encoder(str(tmp_path / "no" / "bert"))
    with pytest.raises(CheckpointError, match=r"^vision tower folder \./vit does not exist$"):
        load_vision_tower("./vit")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"^text encoder folder models/bert does not exist"):
        load_text_encoder("models/bert")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_vision_tower("~/clip")[1] == digest  # '~' is the home folder, as in a shell


def test_captions_without_vocabulary_words_are_a_data_error_naming_them(tmp_path):
    from feddat.data.clients import DataError
    from feddat.pretrain.train import pretrain

    root = write_pairs(tmp_path / "pairs", n=20)
    lines = (root / "captions.jsonl").read_text().splitlines()
    emoji = lambda line: json.dumps({"image": json.loads(line)["image"], "caption": "\U0001F600 \U0001F436"})  # noqa: E731
    (root / "captions.jsonl").write_text("\n".join(map(emoji, lines)) + "\n")
    with pytest.raises(DataError, match=rf"{root / 'captions.jsonl'}: no caption has a word the text encoder 'minilm' knows"):
        pretrain(tiny_recipe(tmp_path, corpus="folder", root=str(root), out=str(tmp_path / "a"), steps=2, batch_size=4), log=lambda _: None)
    # only the two held-out pairs have words: every training batch is masked-word prediction with nothing to mask
    (root / "captions.jsonl").write_text("\n".join([*map(emoji, lines[:-2]), *lines[-2:]]) + "\n")
    with pytest.raises(DataError, match=rf"pretrain.root {root}: step 1's batch has nothing to learn from.*mlm_fraction 1.0.*'\U0001F600 \U0001F436'"):
        pretrain(tiny_recipe(tmp_path, corpus="folder", root=str(root), out=str(tmp_path / "b"), steps=2, batch_size=4, mlm_fraction=1.0), log=lambda _: None)
