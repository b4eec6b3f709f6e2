"""Client datasets: vocabulary, feature cache, the folder source and its error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import raw_split, tiny_config
from feddat.data.clients import DataError, answer_vocabulary, build_client, cached_features, load_clients


def test_vocabulary_is_most_frequent_first_and_capped():
    assert answer_vocabulary(["b", "a", "b", "c", "a", "b"], 2) == ["b", "a"]
    assert answer_vocabulary(["z", "y"], 5) == ["y", "z"]  # ties: alphabetical, reproducible


def test_out_of_vocabulary_answers_dropped_in_train_kept_as_wrong_in_test(tiny_backbone):
    train = raw_split(12, 0, answers=("a", "a", "b", "c"))
    test = raw_split(8, 1, answers=("a", "c"))
    client = build_client("x", train, test, tiny_backbone, max_answers=2, cache_dir=None)
    assert client.answers == ["a", "b"] or client.answers == ["a", "c"]
    assert len(client.train) < 12 and (client.train.targets >= 0).all()
    assert len(client.test) == 8 and (client.test.targets == -1).any()


def test_empty_client_dataset_is_refused_by_name(tiny_backbone):
    with pytest.raises(DataError, match="client 'lonely' has an empty training set"):
        build_client("lonely", raw_split(0, 0), raw_split(4, 1), tiny_backbone, 10, None)


def test_feature_cache_is_reused_and_keyed_by_content(tiny_backbone, tmp_path):
    raw = raw_split(4, 0)
    first = cached_features(raw, tiny_backbone, tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    raw.images[:] = 0  # same key: the cache answers, proving it was used
    assert (cached_features(raw, tiny_backbone, tmp_path) == first).all()
    raw.key += "-changed"
    cached_features(raw, tiny_backbone, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    # another image size is another backbone input: a new entry, not the old features
    from feddat.backbones import build_backbone

    bigger = build_backbone("vilt", tiny_backbone.source, image_size=48, max_text_len=12)
    assert cached_features(raw, bigger, tmp_path).shape[-1] == 48
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def write_folder(root, n=4, corrupt=False, missing=False, bad_line=False, not_utf8=False, folder_image=False):
    for client in ("north", "south"):
        folder = root / client
        (folder / "img").mkdir(parents=True)
        for split in ("train", "test"):
            lines = []
            for i in range(n):
                name = f"img/{split}{i}.png"
                Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(folder / name)
                lines.append(json.dumps({"image": name, "question": f"what is {i}?", "answer": "yes" if i % 2 else "no"}))
            if corrupt and client == "south" and split == "train":
                (folder / "img" / "train1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            if missing and client == "south" and split == "test":
                (folder / "img" / "test2.png").unlink()
            if bad_line and client == "north" and split == "train":
                lines[2] = '{"image": "img/train2.png", "question": 3}'
            if folder_image and client == "north" and split == "test":
                lines[1] = json.dumps({"image": "img", "question": "what is 1?", "answer": "yes"})
            text = ("\n".join(lines) + "\n").encode()
            if not_utf8 and client == "south" and split == "train":  # a Latin-1 line: "é" as one byte
                text = text.replace(b"what is 3?", b"qu\xe9 es 3?")
            (folder / f"{split}.jsonl").write_bytes(text)


def load_folder(root, backbone):
    cfg = tiny_config(**{"data.benchmark": "folder", "data.root": str(root), "data.cache_dir": ""})
    return load_clients(cfg, backbone, log=lambda s: None)


def test_folder_source_loads_every_client(tiny_backbone, tmp_path):
    write_folder(tmp_path)
    clients = load_folder(tmp_path, tiny_backbone)
    assert [c.name for c in clients] == ["north", "south"]
    assert len(clients[0].train) == 4 and clients[0].answers == ["no", "yes"]


@pytest.mark.parametrize(
    "fault, message",
    [
        ({"corrupt": True}, r"south/train.jsonl:2: image file .*train1.png is corrupt"),
        ({"missing": True}, r"south/test.jsonl:3: image file .*test2.png does not exist"),
        ({"bad_line": True}, r"north/train.jsonl:3: a record needs non-empty string fields"),
        ({"not_utf8": True}, r"south/train.jsonl:4: not UTF-8 text"),
        ({"folder_image": True}, r"north/test.jsonl:2: image file .*img is a folder, not a file"),
    ],
)
def test_folder_faults_name_file_and_line(tiny_backbone, tmp_path, fault, message):
    write_folder(tmp_path, **fault)
    with pytest.raises(DataError, match=message):
        load_folder(tmp_path, tiny_backbone)


@pytest.mark.parametrize(
    "fault, client, split, message",
    [
        ({"corrupt": True}, "south", "train", "train1.png is corrupt"),
        ({"missing": True}, "south", "test", "test2.png does not exist"),
        ({"bad_line": True}, "north", "train", "north/train.jsonl:3"),
        ({"not_utf8": True}, "south", "train", "south/train.jsonl:4: not UTF-8"),
    ],
)
def test_skip_policy_drops_and_counts_bad_records(tiny_backbone, tmp_path, fault, client, split, message):
    write_folder(tmp_path, **fault)
    cfg = tiny_config(**{"data.benchmark": "folder", "data.root": str(tmp_path), "data.cache_dir": "", "data.on_bad_record": "skip"})
    lines: list[str] = []
    clients = {c.name: c for c in load_clients(cfg, tiny_backbone, log=lines.append)}
    sizes = {name: (len(c.train), len(c.test)) for name, c in clients.items()}
    expected = {"north": (4, 4), "south": (4, 4)}
    n_train, n_test = expected[client]
    expected[client] = (n_train - (split == "train"), n_test - (split == "test"))
    assert sizes == expected
    warning = [line for line in lines if line.startswith("warning: skipped 1 bad record(s)")]
    assert warning and message in warning[0]


def test_describe_skips_bad_records_under_the_skip_policy(tmp_path, capsys):
    """`feddat data describe` reads the benchmark under the same data.on_bad_record as a run."""
    from feddat.cli import main

    write_folder(tmp_path, bad_line=True)
    args = ["data", "describe", "--data.benchmark", "folder", "--data.root", str(tmp_path)]
    assert main(args) == 1 and "north/train.jsonl:3" in capsys.readouterr().err  # the default stops
    assert main([*args, "--data.on_bad_record", "skip"]) == 0
    out, err = capsys.readouterr()
    assert "2 clients" in out and "warning: skipped 1 bad record(s)" in err and "north/train.jsonl:3" in err


# ---- how images are read -------------------------------------------------------------------


def test_a_16_bit_greyscale_png_keeps_its_grey_levels(tmp_path):
    """PIL's convert('RGB') clips 16-bit values at 255: every mid-grey would come out white."""
    from feddat.data.folder import load_image

    for value, expected in ((32768, 128), (1000, 3), (65535, 255)):
        path = tmp_path / f"grey{value}.png"
        Image.fromarray(np.full((8, 8), value, np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I")  # written as 16-bit
        assert np.all(load_image(path, 4) == expected), value


def test_your_own_photos_are_read_upright_the_public_ones_as_stored(tiny_backbone, tmp_path):
    """A phone photo's EXIF orientation 6 (turn 90° clockwise to show): folder data and
    `feddat predict` read it as shown; the public datasets as stored, as their reference
    pipelines read them."""
    from feddat.data.folder import load_image
    from feddat.data.folder import read_split as read_folder_split

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # white left half as stored; shown turned, it is the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(stored).save(folder / "photo.png", exif=exif)
    as_stored, upright = load_image(folder / "photo.png", 8), load_image(folder / "photo.png", 8, upright=True)
    assert as_stored[:, :3].mean() > 200 and as_stored[:, 5:].mean() < 50  # left half white
    assert upright[:3].mean() > 200 and upright[5:].mean() < 50  # top half white
    (folder / "train.jsonl").write_text(json.dumps({"image": "photo.png", "question": "what is on top?", "answer": "white"}) + "\n")
    read = read_folder_split(folder / "train.jsonl")
    from feddat.data.folder import IMAGE_SIDE

    assert np.array_equal(read.images[0], load_image(folder / "photo.png", IMAGE_SIDE, upright=True))


def test_client_folders_whose_names_differ_only_in_case_are_refused(tmp_path):
    from feddat.data.folder import client_folders

    for name in ("North", "north"):
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match="client folders 'North' and 'north' differ only in case"):
        client_folders(tmp_path)


def test_two_client_names_never_share_a_state_file(tmp_path):
    import torch

    from feddat.engines.state import ClientStateStore

    store = ClientStateStore(tmp_path)
    names = ["north east", "north_east", "客户", "顾客", "flat"]
    for i, name in enumerate(names):
        store.save(name, {"w": torch.full((1,), float(i))}, round_=1)
    assert [float(store.load(name)["w"]) for name in names] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert store.path("flat", 1).name == "flat.r00001.safetensors"  # a safe name stays the file's name


def test_questions_longer_than_max_text_len_are_cut_with_a_warning(tiny_backbone):
    from feddat.data.clients import QuestionsCut, encode_split

    raw = raw_split(4, seed=0)
    raw.questions[2] = "what colour is the object " + "that is beside the other one " * 4 + "?"
    assert tiny_backbone.too_long(raw.questions) == [2]
    with pytest.warns(QuestionsCut, match=r"1 of 4 questions of .* are longer than backbone.max_text_len = 12 tokens and are cut \(e.g. 'what colour is the object that is"):
        split = encode_split(raw, tiny_backbone, ["red", "blue", "green"], None, drop_unknown=False)
    assert split.input_ids.shape[1] == tiny_backbone.max_text_len
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", QuestionsCut)  # questions that fit: no warning
        encode_split(raw_split(4, seed=0), tiny_backbone, ["red", "blue", "green"], None, drop_unknown=False)


def test_folder_images_are_read_at_the_backbones_image_size(tmp_path):
    """As public data: a ViLT at 384 px gets your photos at 384, not at 128 and scaled up again."""
    from feddat.data.sources import raw_clients

    write_folder(tmp_path)
    for side in (48, 96):
        cfg = tiny_config(**{"data.benchmark": "folder", "data.root": str(tmp_path), "backbone.image_size": side})
        clients = raw_clients(cfg)
        assert {c.train.images.shape[1:] for c in clients} == {(side, side, 3)}
    assert len({c.train.key for c in raw_clients(cfg)} & {c.train.key for c in raw_clients(tiny_config(**{"data.benchmark": "folder", "data.root": str(tmp_path), "backbone.image_size": 48}))}) == 0


# ---- your own data: per-client caps, the answer vocabulary, field and folder messages ---------


def folder_config(root, **overrides):
    return tiny_config(**{"data.benchmark": "folder", "data.root": str(root), "data.cache_dir": "", **overrides})


def test_folder_caps_draw_a_sample_seeded_by_the_data_seed(tmp_path):
    """data.train_per_client / test_per_client cap your own clients as they cap public data: a
    sample seeded by data.seed (the same config, the same questions); a cap at or above a client's
    size changes nothing, not even the feature cache's key."""
    import hashlib

    from feddat.data.sources import raw_clients

    write_folder(tmp_path, n=6)
    capped = raw_clients(folder_config(tmp_path, **{"data.train_per_client": 4, "data.test_per_client": 3}))
    assert [(len(c.train), len(c.test)) for c in capped] == [(4, 3), (4, 3)]
    assert [c.train.available for c in capped] == [6, 6]  # how many it was drawn from
    again = raw_clients(folder_config(tmp_path, **{"data.train_per_client": 4, "data.test_per_client": 3}))
    assert [c.train.questions for c in again] == [c.train.questions for c in capped] and [c.train.key for c in again] == [c.train.key for c in capped]
    other_seeds = [raw_clients(folder_config(tmp_path, **{"data.train_per_client": 4, "data.seed": s}))[0].train.questions for s in range(1, 6)]
    assert any(q != capped[0].train.questions for q in other_seeds)
    assert all(q in [f"what is {i}?" for i in range(6)] for q in capped[0].train.questions)
    whole, big = (raw_clients(folder_config(tmp_path, **{"data.train_per_client": n, "data.test_per_client": n})) for n in (0, 1024))
    assert [len(c.train) for c in big] == [6, 6] and [c.train.key for c in big] == [c.train.key for c in whole]
    assert big[0].train.available is None  # nothing was drawn
    assert capped[0].train.key != whole[0].train.key
    # the key of a split read whole is the one earlier versions gave it (feature caches stay valid)
    path = tmp_path / "north" / "train.jsonl"
    from conftest import TINY_IMAGE

    digest = hashlib.sha256(f"v2|{TINY_IMAGE}".encode())
    for line in path.read_bytes().splitlines(keepends=True):
        digest.update(line)
        digest.update((path.parent / json.loads(line)["image"]).read_bytes())
    assert whole[0].train.key == f"folder:{digest.hexdigest()}"


def test_a_run_names_its_drawn_sample(tiny_backbone, tmp_path):
    write_folder(tmp_path, n=6)
    lines: list[str] = []
    clients = load_clients(folder_config(tmp_path, **{"data.train_per_client": 4, "data.test_per_client": 0}), tiny_backbone, log=lines.append)
    assert [(len(c.train), len(c.test)) for c in clients] == [(4, 6), (4, 6)]
    assert any("north" in line and "4 of its 6 training questions" in line and "data.train_per_client" in line for line in lines)


def answers_folder(root, train, test):
    """One client 'solo' whose training and test questions have these answers."""
    folder = root / "solo"
    (folder / "img").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "img" / "0.png")
    for split, answers in (("train", train), ("test", test)):
        lines = [json.dumps({"image": "img/0.png", "question": f"q{i}", "answer": a}) for i, a in enumerate(answers)]
        (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))


def test_describe_and_run_agree_on_the_answer_vocabulary(tiny_backbone, tmp_path, capsys):
    """--data.max_answers 2 keeps the 2 most frequent answers: `describe` shows the questions a
    run trains on, and both say how many fell outside (train: dropped; test: counted wrong)."""
    from feddat.cli import main
    from feddat.data.clients import write_client_index

    answers_folder(tmp_path, train=["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"], test=["a", "b", "c", "d"])
    js = tmp_path / "d.json"
    assert main(["data", "describe", "--data.benchmark", "folder", "--data.root", str(tmp_path), "--data.max_answers", "2", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| solo | vqa | 7 | 4 | 2 |" in out
    assert "3 training questions" in out and "dropped" in out and "2 test questions" in out and "counted wrong" in out
    row = json.loads(js.read_text())["clients"][0]
    assert (row["train"], row["test"], row["answers"], row["train_outside_vocabulary"], row["test_outside_vocabulary"]) == (7, 4, 2, 3, 2)
    lines: list[str] = []
    client = load_clients(folder_config(tmp_path, **{"data.max_answers": 2}), tiny_backbone, log=lines.append)[0]
    assert (len(client.train), len(client.test), client.num_answers) == (7, 4, 2)
    assert (client.train_outside_vocabulary, client.test_outside_vocabulary) == (3, 2)
    said = "\n".join(lines)
    assert "3 training questions" in said and "dropped" in said and "2 test questions" in said and "counted wrong" in said
    write_client_index(tmp_path, [client])
    facts = json.loads((tmp_path / "clients.json").read_text())["data"][0]
    assert facts == {"name": "solo", "train": 7, "test": 4, "train_outside_vocabulary": 3, "test_outside_vocabulary": 2}
    # nothing outside: no such line
    lines.clear()
    load_clients(folder_config(tmp_path), tiny_backbone, log=lines.append)
    assert not any("outside" in line for line in lines)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"img": "img/0.png", "question": "q", "answer": "a"}, r"solo/train.jsonl:2: a record needs non-empty string fields 'image', 'question' and 'answer': 'image' is missing \(its fields are 'img', 'question', 'answer'\)"),
        ({"image": "img/0.png", "question": "q", "answer": 3}, r"solo/train.jsonl:2: .*'answer' is the number 3, not a string"),
        ({"image": "img/0.png", "question": "  ", "answer": "a"}, r"solo/train.jsonl:2: .*'question' is empty"),
        ({"image": "img/0.png", "question": None, "answer": ["a"]}, r"'question' is null, not a string; 'answer' is a list, not a string"),
        (["img/0.png", "q", "a"], r"solo/train.jsonl:2: a record needs .*: the line holds a list, not a JSON object"),
    ],
)
def test_a_bad_record_names_the_field(tmp_path, record, message):
    from feddat.data.sources import raw_clients

    answers_folder(tmp_path, train=["a", "b"], test=["a"])
    path = tmp_path / "solo" / "train.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message):
        raw_clients(folder_config(tmp_path))


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Excel and Notepad save "UTF-8" with a byte-order mark in front of the first line."""
    from feddat.data.sources import raw_clients

    answers_folder(tmp_path, train=["a", "b"], test=["a"])
    for split in ("train", "test"):
        path = tmp_path / "solo" / f"{split}.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    client = raw_clients(folder_config(tmp_path))[0]
    assert client.train.answers == ["a", "b"] and client.test.answers == ["a"]


def test_macos_archive_and_hidden_folders_are_not_clients(tmp_path, capsys):
    from feddat.data.folder import client_folders

    answers_folder(tmp_path, train=["a"], test=["a"])
    for junk in ("__MACOSX", ".git", ".ipynb_checkpoints"):
        (tmp_path / junk / "solo").mkdir(parents=True)
    assert [f.name for f in client_folders(tmp_path)] == ["solo"]
    assert [f.name for f in client_folders(tmp_path)] == ["solo"]
    err = capsys.readouterr().err
    assert err.count("skipped") == 1  # once, however often the folders are listed
    assert "__MACOSX" in err and ".git" in err and ".ipynb_checkpoints" in err and str(tmp_path) in err


def test_an_empty_or_missing_client_file_is_named_with_its_client(tiny_backbone, tmp_path):
    """A client folder whose train.jsonl holds no record, or whose test.jsonl is missing, stops
    the run with the client and the file named."""
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    write_folder(empty)
    (empty / "south" / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"client 'south' has an empty training set: \S*empty/south/train.jsonl holds no record"):
        load_folder(empty, tiny_backbone)
    write_folder(missing)
    (missing / "north" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"client 'north': its annotation file \S*missing/north/test.jsonl does not exist"):
        load_folder(missing, tiny_backbone)
