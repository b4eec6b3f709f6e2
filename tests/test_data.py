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
