"""Loaders of the published dataset formats, on tiny fixtures written in each exact format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from feddat.config import ConfigError, load
from feddat.data.clients import DataError, load_clients
from feddat.data.public import DATASETS, PUBLIC_BENCHMARKS, read_split
from feddat.data.sources import raw_clients

N = 3  # records per split


def image(path: Path, value: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), 40 + 30 * value, np.uint8)).save(path)
    return path.name


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def dump_lines(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def ten(*answers: str) -> list[dict]:
    """VQA-style annotator answers, padded to 10 with the first."""
    full = list(answers) + [answers[0]] * (10 - len(answers))
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(full)]


def write_vqa(folder: Path, questions: str, annotations: str, image_path, split_tag: str) -> None:
    qs, anns = [], []
    for i in range(N):
        qid = 1000 + i
        image(image_path(i), i)
        qs.append({"image_id": i, "question": f"what is thing {i}?", "question_id": qid})
        anns.append({"question_id": qid, "image_id": i, "question_type": "what is", "answer_type": "other", "multiple_choice_answer": "cat", "answers": ten("cat", "cat", "dog", "dog", "dog")})
    dump(folder / questions, {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split_tag, "questions": qs, "license": {}})
    dump(folder / annotations, {"info": {}, "data_type": "mscoco", "data_subtype": split_tag, "annotations": anns, "license": {}})


def make_vqav2(root: Path) -> None:
    for sub in ("train2014", "val2014"):
        folder = root / "vqav2"
        write_vqa(folder, f"v2_OpenEnded_mscoco_{sub}_questions.json", f"v2_mscoco_{sub}_annotations.json", lambda i, sub=sub: folder / sub / f"COCO_{sub}_{i:012d}.jpg", sub)


def make_vqa_abstract(root: Path) -> None:
    for sub in ("train2015", "val2015"):
        folder = root / "vqa_abstract"
        write_vqa(folder, f"OpenEnded_abstract_v002_{sub}_questions.json", f"abstract_v002_{sub}_annotations.json", lambda i, sub=sub: folder / f"scene_img_abstract_v002_{sub}" / f"abstract_v002_{sub}_{i:012d}.png", sub)


def make_vizwiz(root: Path) -> None:
    for sub in ("train", "val"):
        records = [{"image": image(root / "vizwiz" / sub / f"VizWiz_{sub}_{i:08d}.jpg", i), "question": "What is this?", "answers": ten("Soup can", "unanswerable"), "answer_type": "other", "answerable": 1} for i in range(N)]
        dump(root / "vizwiz" / "Annotations" / f"{sub}.json", records)


def make_gqa(root: Path) -> None:
    for name in ("train_balanced_questions.json", "testdev_balanced_questions.json"):
        data = {}
        for i in range(N):
            image(root / "gqa" / "images" / f"n{i}.jpg", i)
            data[f"0{i}1"] = {"semantic": [], "entailed": [], "equivalent": [f"0{i}1"], "question": "Is the sky blue?", "imageId": f"n{i}", "isBalanced": True, "groups": {"global": None, "local": "01-sky"}, "answer": "yes" if i % 2 else "no", "semanticStr": "", "annotations": {}, "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"}, "fullAnswer": "Yes, the sky is blue."}
        dump(root / "gqa" / name, data)


def make_cocoqa(root: Path) -> None:
    for sub, images in (("train", "train2014"), ("test", "val2014")):
        folder = root / "cocoqa" / sub
        folder.mkdir(parents=True)
        ids = [str(100 + i) for i in range(N)]
        for i, img in enumerate(ids):
            image(root / "cocoqa" / images / f"COCO_{images}_{int(img):012d}.jpg", i)
        (folder / "questions.txt").write_text("\n".join(f"what is the color of the bus {i}" for i in range(N)) + "\n")
        (folder / "answers.txt").write_text("red\nblue\nred\n")
        (folder / "img_ids.txt").write_text("\n".join(ids) + "\n")
        (folder / "types.txt").write_text("2\n2\n0\n")


def make_aqua(root: Path) -> None:
    for split in ("train", "test"):
        records = [{"image": image(root / "aqua" / "SemArt" / "Images" / f"{i}-painting.jpg", i), "question": "what stand next to each other", "answer": "People", "need_external_knowledge": i == 0} for i in range(N)]
        dump(root / "aqua" / f"{split}.json", records)


def make_clove(root: Path) -> None:
    from feddat.data.public.loaders import CLOVE_FUNCTIONS, CLOVE_SCENES

    stems = [("function", s) for s in CLOVE_FUNCTIONS.values()] + [("scene", s) for s in CLOVE_SCENES.values()]
    for kind, stem in stems:
        for split in ("train", "val"):
            records = []
            for i in range(N):
                source = "textvqa" if i == 2 else "vg"
                folder = root / "clove" / ("vg/image" if source == "vg" else "textvqa")
                image(folder / f"{i}7.jpg", i)
                records.append({"image_id": f"{i}7", "image_source": source, "question": "what color is the shirt?", "question_id": f"{stem}{i}", "answers": ["white"] * 6 + ["grey"] * 4})
            dump(root / "clove" / "json" / kind / f"{stem}_{split}.json", records)


def make_nlvr2(root: Path) -> None:
    for split, name in (("train", "train.json"), ("dev", "dev.json")):
        records = []
        for i in range(N):
            ident = f"{split}-{10 + i}-0-{i}"
            folder = root / "nlvr2" / ("images/train/7" if split == "train" else "dev")
            for k in (0, 1):
                image(folder / f"{split}-{10 + i}-0-img{k}.png", i + k)
            record = {"validation": {}, "sentence": "One image shows exactly two dogs.", "left_url": "http://x/l.jpg", "writer": "103", "label": "True" if i % 2 else "False", "right_url": "http://x/r.jpg", "synset": "n02", "query": "dogs", "identifier": ident, "extra_validations": {}}
            if split == "train":
                record["directory"] = 7
            records.append(record)
        dump_lines(root / "nlvr2" / name, records)


def make_snli_ve(root: Path) -> None:
    for split in ("train", "test"):
        records = []
        for i in range(N):
            image(root / "snli_ve" / "flickr30k_images" / f"{3416050480 + i}.jpg", i)
            label = ("entailment", "neutral", "contradiction")[i]
            records.append({"annotator_labels": [label], "captionID": f"{3416050480 + i}.jpg#4", "gold_label": label, "pairID": f"{3416050480 + i}.jpg#4r1e", "sentence1": "A man.", "sentence2": "A person is outdoors.", "Flikr30kID": f"{3416050480 + i}.jpg"})
        dump_lines(root / "snli_ve" / f"snli_ve_{split}.jsonl", records)


MAKERS = {"vqav2": make_vqav2, "vqa_abstract": make_vqa_abstract, "vizwiz": make_vizwiz, "gqa": make_gqa, "cocoqa": make_cocoqa, "aqua": make_aqua, "clove": make_clove, "nlvr2": make_nlvr2, "snli_ve": make_snli_ve}
LOAD = {  # dataset -> (first train answer, answer list or None, groups, two images)
    "vqav2": ("cat", ["cat", "cat", "dog", "dog", "dog"] + ["cat"] * 5, "other", False),
    "vqa_abstract": ("cat", ["cat", "cat", "dog", "dog", "dog"] + ["cat"] * 5, "other", False),
    "vizwiz": ("soup can", ["soup can", "unanswerable"] + ["soup can"] * 8, "other", False),
    "gqa": ("no", None, "verify", False),
    "cocoqa": ("red", None, "color", False),
    "aqua": ("people", None, "knowledge", False),
    "clove_function_attribute": ("white", ["white"] * 6 + ["grey"] * 4, "attribute", False),
    "clove_scene_outdoors": ("white", ["white"] * 6 + ["grey"] * 4, "outdoors", False),
    "nlvr2": ("false", None, "", True),
    "snli_ve": ("entailment", None, "", False),
}


@pytest.fixture()
def root(tmp_path):
    for make in MAKERS.values():
        make(tmp_path)
    return tmp_path


@pytest.mark.parametrize("dataset", list(LOAD))
def test_each_loader_reads_its_public_format(root, dataset):
    answer, answer_list, group, pair = LOAD[dataset]
    for split in ("train", "test"):
        raw = read_split(dataset, root, split, 0, seed=0, image_side=16)
        assert len(raw) == N and raw.images.shape == (N, 16, 16, 3)
        assert raw.answers[0] == answer and raw.groups[0] == group
        assert (raw.images2 is not None) == pair
        assert (raw.answer_lists[0] if raw.answer_lists else None) == answer_list
        assert raw.questions[0]


def test_sub_sampling_is_seeded(root):
    a = read_split("cocoqa", root, "train", 2, seed=5, image_side=16)
    assert len(a) == 2 and a.key == read_split("cocoqa", root, "train", 2, seed=5, image_side=16).key
    keys = {read_split("cocoqa", root, "train", 2, seed=s, image_side=16).key for s in range(8)}
    assert len(keys) > 1  # other seeds pick other questions


def corrupt(root: Path, dataset: str) -> str:
    """Break one record of `dataset` the way real files go wrong; return the expected message."""
    if dataset == "vqav2":
        path = root / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json"
        data = json.loads(path.read_text())
        del data["questions"][1]["question"]
        path.write_text(json.dumps(data))
        return r"v2_OpenEnded_mscoco_train2014_questions.json: question 1 \(question_id 1001\): field 'question' is missing"
    if dataset == "vqa_abstract":
        path = root / "vqa_abstract" / "abstract_v002_train2015_annotations.json"
        data = json.loads(path.read_text())
        data["annotations"][2]["answers"] = []
        path.write_text(json.dumps(data))
        return r"abstract_v002_train2015_annotations.json: annotation 2 \(question_id 1002\): field 'answers'"
    if dataset == "vizwiz":
        (root / "vizwiz" / "train" / "VizWiz_train_00000001.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        return r"Annotations/train.json: record 1: image file .*VizWiz_train_00000001.jpg is corrupt"
    if dataset == "gqa":
        path = root / "gqa" / "train_balanced_questions.json"
        data = json.loads(path.read_text())
        data["021"]["imageId"] = 5
        path.write_text(json.dumps(data))
        return r"train_balanced_questions.json: question 021: field 'imageId' is missing or not a non-empty str"
    if dataset == "cocoqa":
        (root / "cocoqa" / "train" / "types.txt").write_text("2\n9\n0\n")
        return r"cocoqa/train/types.txt:2: type '9' is not 0, 1, 2 or 3"
    if dataset == "aqua":
        (root / "aqua" / "SemArt" / "Images" / "2-painting.jpg").unlink()
        return r"aqua/train.json: record 2: image file .*2-painting.jpg does not exist"
    if dataset == "clove_function_attribute":
        path = root / "clove" / "json" / "function" / "functional_attribute_train.json"
        data = json.loads(path.read_text())
        data[0]["image_source"] = "coco"
        path.write_text(json.dumps(data))
        return r"functional_attribute_train.json: record 0: image_source 'coco' is not 'vg' or 'textvqa'"
    if dataset == "nlvr2":
        path = root / "nlvr2" / "train.json"
        lines = path.read_text().splitlines()
        lines[1] = lines[1][:40]  # a truncated line
        path.write_text("\n".join(lines) + "\n")
        return r"nlvr2/train.json:2: not valid JSON"
    if dataset == "snli_ve":
        path = root / "snli_ve" / "snli_ve_train.jsonl"
        lines = path.read_text().splitlines()
        lines[2] = lines[2].replace('"contradiction"', '"-"')
        path.write_text("\n".join(lines) + "\n")
        return r"snli_ve_train.jsonl:3: gold_label '-' is not one of entailment, neutral, contradiction"
    raise AssertionError(dataset)


@pytest.mark.parametrize("dataset", ["vqav2", "vqa_abstract", "vizwiz", "gqa", "cocoqa", "aqua", "clove_function_attribute", "nlvr2", "snli_ve"])
def test_a_broken_record_is_reported_with_file_and_record(root, dataset):
    message = corrupt(root, dataset)
    with pytest.raises(DataError, match=message):
        read_split(dataset, root, "train", 0, seed=0, image_side=16)


def empty(root: Path, dataset: str) -> str:
    """Empty the train file of `dataset` as a failed download or a bad trim leaves it; return the
    expected message, which names that file (not the feature cache's key)."""
    if dataset in ("vqav2", "vqa_abstract"):
        name = {"vqav2": "v2_OpenEnded_mscoco_train2014_questions.json", "vqa_abstract": "OpenEnded_abstract_v002_train2015_questions.json"}[dataset]
        path = root / dataset / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "questions": []}))
        return re.escape(f"{path}: the list under 'questions' is empty")
    lists = {"vizwiz": "vizwiz/Annotations/train.json", "aqua": "aqua/train.json", "clove_function_attribute": "clove/json/function/functional_attribute_train.json"}
    if dataset in lists:
        (root / lists[dataset]).write_text("[]")
        return re.escape(f"{root / lists[dataset]}: the list of records is empty")
    files = {"gqa": ("gqa/train_balanced_questions.json", "{}", "no questions"), "nlvr2": ("nlvr2/train.json", "\n", "no records"), "snli_ve": ("snli_ve/snli_ve_train.jsonl", "", "no records")}
    if dataset in files:
        name, text, what = files[dataset]
        (root / name).write_text(text)
        return re.escape(f"{root / name}: the file holds {what}")
    assert dataset == "cocoqa"
    for column in ("questions", "answers", "img_ids", "types"):
        (root / "cocoqa" / "train" / f"{column}.txt").write_text("")
    return re.escape(f"{root / 'cocoqa' / 'train' / 'questions.txt'}: the file holds no questions")


@pytest.mark.parametrize("dataset", ["vqav2", "vqa_abstract", "vizwiz", "gqa", "cocoqa", "aqua", "clove_function_attribute", "nlvr2", "snli_ve"])
def test_an_empty_file_is_named(root, dataset):
    message = empty(root, dataset)
    with pytest.raises(DataError, match=message):
        read_split(dataset, root, "train", 0, seed=0, image_side=16)


def test_gqa_types_that_are_not_an_object_stop_the_run(root):
    path = root / "gqa" / "train_balanced_questions.json"
    data = json.loads(path.read_text())
    data["021"]["types"] = "oops"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"train_balanced_questions.json: question 021: field 'types' is 'oops', not an object"):
        read_split("gqa", root, "train", 0, seed=0, image_side=16)


def test_cocoqa_text_that_is_not_utf8_or_an_id_that_is_not_a_number_is_named(root):
    questions = root / "cocoqa" / "train" / "questions.txt"
    questions.write_bytes(b"what is the color of the bus 0\nwhat is the caf\xe9 1\nwhat is it 2\n")
    with pytest.raises(DataError, match=r"cocoqa/train/questions.txt:2: not UTF-8 text \(byte 0xe9\)"):
        read_split("cocoqa", root, "train", 0, seed=0, image_side=16)
    questions.write_text("a\nb\nc\n")
    (root / "cocoqa" / "train" / "img_ids.txt").write_text("100\n\u00b2\n102\n")  # '²'.isdigit() is True
    with pytest.raises(DataError, match=r"cocoqa/train/img_ids.txt:2: image id '\u00b2' is not a number"):
        read_split("cocoqa", root, "train", 0, seed=0, image_side=16)


def test_an_answer_the_vqa_processing_empties_stays_itself(root):
    path = root / "aqua" / "train.json"
    data = json.loads(path.read_text())
    data[0]["answer"] = "The"
    path.write_text(json.dumps(data))
    assert read_split("aqua", root, "train", 0, seed=0, image_side=16).answers[0] == "the"


def test_an_image_whose_header_claims_billions_of_pixels_is_a_named_bad_record(root):
    import struct
    import zlib

    from feddat.data import faults

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = root / "vizwiz" / "train" / "VizWiz_train_00000001.jpg"  # a PNG of 60000 x 60000 by its header
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))
    with pytest.raises(DataError, match=r"Annotations/train.json: record 1: image file .*VizWiz_train_00000001.jpg is corrupt or too large"):
        read_split("vizwiz", root, "train", 0, seed=0, image_side=16)
    with faults.policy("skip"):
        assert len(read_split("vizwiz", root, "train", 0, seed=0, image_side=16)) == N - 1


def test_missing_download_names_the_file(tmp_path):
    cfg = tiny_config(**{"data.source": "public", "data.benchmark": "domain", "data.root": str(tmp_path)})
    with pytest.raises(DataError, match=r"aqua: .*aqua/train.json does not exist; download"):
        raw_clients(cfg)
    with pytest.raises(ConfigError, match="needs data.root"):
        load(None, {"data.source": "public", "data.benchmark": "task"})
    with pytest.raises(ConfigError, match="data.benchmark = 'shapes' is not one of"):
        load(None, {"data.source": "public", "data.benchmark": "shapes", "data.root": str(tmp_path)})


@pytest.mark.parametrize("benchmark, clients", [("domain", 5), ("function", 6), ("scene", 6), ("task", 3)])
def test_named_public_benchmarks_build_their_clients(root, benchmark, clients):
    cfg = tiny_config(**{"data.source": "public", "data.benchmark": benchmark, "data.root": str(root), "data.train_per_client": 0, "data.test_per_client": 0})
    raws = raw_clients(cfg)
    assert [c.name for c in raws] == [name for name, _ in PUBLIC_BENCHMARKS[benchmark]] and len(raws) == clients


def test_public_task_benchmark_encodes_soft_pair_and_entailment_clients(root, tiny_backbone):
    cfg = tiny_config(**{"data.source": "public", "data.benchmark": "task", "data.root": str(root), "data.train_per_client": 0, "data.test_per_client": 0, "data.cache_dir": ""})
    vqa, nlvr2, snli = load_clients(cfg, tiny_backbone, log=lambda s: None)
    assert vqa.answers == ["cat"] and vqa.train.targets.is_floating_point()
    assert vqa.train.targets[0, 0].item() == pytest.approx(1.0)  # 7 of 10 annotators said cat: min(7 / 3, 1)
    assert nlvr2.images_per_example == 2 and nlvr2.answers == ["true", "false"]
    assert snli.task == "entailment" and snli.test.targets.tolist() == [0, 1, 2]


def test_every_dataset_has_a_fixture():
    assert {spec.folder for spec in DATASETS.values()} == set(MAKERS)


def test_one_public_dataset_split_by_category_and_by_dirichlet(root):
    cfg = tiny_config(**{"data.source": "public", "data.benchmark": "cocoqa", "data.root": str(root), "data.partition": "category", "data.train_per_client": 0, "data.test_per_client": 0})
    clients = raw_clients(cfg)
    assert [(c.name, len(c.train)) for c in clients] == [("color", 2), ("object", 1)]  # types.txt: 2, 2, 0
    cfg = tiny_config(**{"data.source": "public", "data.benchmark": "vqav2", "data.root": str(root), "data.partition": "iid", "data.num_clients": 3, "data.train_per_client": 0, "data.test_per_client": 0, "data.min_per_client": 1})
    clients = raw_clients(cfg)
    assert [len(c.train) for c in clients] == [1, 1, 1] and all(c.train.answer_lists for c in clients)


def test_describe_reads_no_public_images(root, capsys):
    from feddat.cli import main

    for path in (root / "gqa" / "images").iterdir():
        path.write_bytes(b"not an image")  # describe must not need them
    assert main(["data", "describe", "--data.source", "public", "--data.root", str(root), "--data.benchmark", "domain", "--data.train_per_client", "0", "--data.test_per_client", "0"]) == 0
    out = capsys.readouterr().out
    assert "| gqa | vqa | 3 | 3 |" in out and "Jensen-Shannon" in out


def test_skip_policy_drops_a_record_with_a_corrupt_image_and_counts_it(root):
    from feddat.data import faults

    corrupt(root, "vizwiz")
    with faults.policy("skip") as found:
        raw = read_split("vizwiz", root, "train", 0, seed=0, image_side=16)
    assert len(raw) == N - 1 and len(found.skipped) == 1
    assert "VizWiz_train_00000001.jpg is corrupt" in found.skipped[0]
    # a malformed annotation is not an image fault: it stops the run under either policy
    corrupt(root, "vqav2")
    with faults.policy("skip"), pytest.raises(DataError, match="field 'question' is missing"):
        read_split("vqav2", root, "train", 0, seed=0, image_side=16)


# ---- the files as their releases write them, and the official VQA accuracy -------------------------


def rewrite_snli_ve_as_current_generator(root: Path) -> None:
    """necla-ml/SNLI-VE's current generator (vet/tools/snli_ve_generator.py) writes
    "Flickr30K_ID": "<id>" with no extension, where the 2018 release wrote "Flikr30kID": "<id>.jpg"."""
    for split in ("train", "test"):
        path = root / "snli_ve" / f"snli_ve_{split}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:
            r["Flickr30K_ID"] = r.pop("Flikr30kID").removesuffix(".jpg")
        dump_lines(path, records)


def test_snli_ve_reads_the_2018_release_and_the_current_generator_alike(root):
    old = read_split("snli_ve", root, "test", 0, seed=0, image_side=16)
    rewrite_snli_ve_as_current_generator(root)
    new = read_split("snli_ve", root, "test", 0, seed=0, image_side=16)
    assert new.answers == old.answers == ["entailment", "neutral", "contradiction"]
    np.testing.assert_array_equal(new.images, old.images)  # the same Flickr30k files


def test_snli_ve_record_without_an_image_field_or_with_two_different_ones_is_named(root):
    path = root / "snli_ve" / "snli_ve_train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[1]["Flickr30K_ID"] = "999"  # disagrees with its Flikr30kID
    del records[2]["Flikr30kID"]
    dump_lines(path, records)
    with pytest.raises(DataError, match=r"snli_ve_train.jsonl:2: 'Flickr30K_ID' and 'Flikr30kID' name different images"):
        read_split("snli_ve", root, "train", 0, seed=0, image_side=16)
    records[1]["Flickr30K_ID"] = records[1]["Flikr30kID"]
    dump_lines(path, records)
    with pytest.raises(DataError, match=r"snli_ve_train.jsonl:3: no image field: expected 'Flickr30K_ID'"):
        read_split("snli_ve", root, "train", 0, seed=0, image_side=16)


def strip_field(path: Path, key: str | None, name: str) -> None:
    data = json.loads(path.read_text())
    for record in data[key] if key else data:
        del record[name]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("dataset, path, key", [
    ("vqav2", "vqav2/v2_mscoco_train2014_annotations.json", "annotations"),
    ("vizwiz", "vizwiz/Annotations/train.json", None),
])
def test_a_record_without_answer_type_gets_the_declared_unknown_category_and_a_warning(root, dataset, path, key):
    from feddat.data.public.common import MissingCategory

    strip_field(root / path, key, "answer_type")
    with pytest.warns(MissingCategory, match=r"3 of 3 record\(s\) have no 'answer_type'; their category is 'unknown'"):
        raw = read_split(dataset, root, "train", 0, seed=0, image_side=16)
    assert raw.groups == ["unknown"] * N and "unknown" in DATASETS[dataset].categories


def test_an_answer_type_outside_the_declared_ones_stops_the_run(root):
    path = root / "vizwiz" / "Annotations" / "train.json"
    data = json.loads(path.read_text())
    data[1]["answer_type"] = ""
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"Annotations/train.json: record 1: field 'answer_type' is '', not one of other, yes/no, number, unanswerable"):
        read_split("vizwiz", root, "train", 0, seed=0, image_side=16)


def test_answers_are_processed_as_the_official_vqa_evaluation_does(root):
    path = root / "vqav2" / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["answers"] = ten("2.5", "2.5", "2.5", "10:30", "don't know", "Two", "two", "2.5", "2.5", "2.5")
    path.write_text(json.dumps(data))
    raw = read_split("vqav2", root, "test", 0, seed=0, image_side=16)
    assert set(raw.answer_lists[0]) == {"2.5", "10:30", "don't know", "2"}  # the official processing keeps 2.5, 10:30, don't
    assert raw.eval_answers[0][5] == "Two"  # the official accuracy takes the annotators' answers as written


def test_ten_answer_clients_are_scored_with_the_official_vqa_accuracy(root, tiny_backbone):
    """Fixture questions: 7 annotators said cat, 3 said dog. The soft training target of 'dog' is
    min(3 / 3, 1) = 1; the official accuracy of answering 'dog' is 0.9 (three of ten)."""
    path = root / "vqav2" / "v2_mscoco_train2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["answers"] = ten("dog")  # a training question whose answer is dog: 'dog' joins the vocabulary
    path.write_text(json.dumps(data))
    cfg = tiny_config(**{"data.source": "public", "data.benchmark": "vqav2", "data.root": str(root), "data.train_per_client": 0, "data.test_per_client": 0, "data.cache_dir": ""})
    (client,) = load_clients(cfg, tiny_backbone, log=lambda s: None)
    assert client.answers == ["cat", "dog"] and client.test.accuracy is not None
    assert client.test.targets[:, 1].tolist() == [1.0] * N  # training targets stay the soft scores
    logits = torch.tensor([[0.0, 1.0]] * N)  # always answer 'dog'
    assert client.test.score(logits, torch.arange(N)).tolist() == pytest.approx([0.9] * N)
    assert client.test.score(-logits, torch.arange(N)).tolist() == pytest.approx([1.0] * N)  # 'cat': 7 of 10


def test_pooling_ten_answer_and_one_answer_data_scores_the_one_answer_part_by_exact_match():
    from feddat.data.clients import RawSplit
    from feddat.data.vqa_eval import accuracy_table

    images = np.zeros((1, 4, 4, 3), np.uint8)
    ten_answers = RawSplit(images, ["q"], ["cat"], key="a", answer_lists=[["cat"] * 10], eval_answers=[["cat"] * 10])
    one_answer = RawSplit(images, ["q"], ["dog"], key="b")
    pooled = RawSplit.concat([ten_answers, one_answer], key="pool")
    assert pooled.eval_answers == [["cat"] * 10, ["dog"]]
    assert accuracy_table(pooled.eval_answers, ["cat", "dog"]).tolist() == [[1.0, 0.0], [0.0, 1.0]]
