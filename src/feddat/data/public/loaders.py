"""Readers for the published formats. Each takes the dataset's folder and "train" or "test" and
returns Records (images are loaded later, only for the sampled records). The folder layouts, and
which release of each dataset's files a reader follows, are in docs/guide/public-datasets.md;
"test" is the split with public answers (val, dev, testdev).

A record's category (answer type, question type, ...) is one of its dataset's declared
categories (data/public/__init__.py), or "unknown" where the file has no such field, with one
warning per file: never a silent empty string.
"""

from __future__ import annotations

from pathlib import Path

from feddat.data.types import DataError
from feddat.data.public.common import (
    UNKNOWN,
    Record,
    annotator_answers,
    category,
    field,
    missing,
    most_common,
    normalise,
    read_json,
    read_jsonl,
    records_of,
    warn_unknown,
)

VQA_TYPES = ("yes/no", "number", "other")  # VQA v1/v2 annotations' answer_type
VIZWIZ_TYPES = ("other", "yes/no", "number", "unanswerable")  # VizWiz annotations' answer_type
GQA_TYPES = ("verify", "query", "choose", "logical", "compare")  # types.structural

# ---- VQA v2 and VQA Abstract Scenes: questions JSON + annotations JSON, 10 answers each ----------


def _vqa(folder: Path, dataset: str, questions: str, annotations: str, image) -> list[Record]:
    q_path, a_path = folder / questions, folder / annotations
    answers = {}
    for i, ann in enumerate(records_of(read_json(a_path, dataset), a_path, "annotations")):
        where = f"{a_path}: annotation {i}"
        answers[field(ann, "question_id", int, where)] = (ann, where)
    records = []
    for i, q in enumerate(records_of(read_json(q_path, dataset), q_path, "questions")):
        where = f"{q_path}: question {i}"
        qid = field(q, "question_id", int, where)
        where = f"{where} (question_id {qid})"
        if qid not in answers:
            raise DataError(f"{where}: no annotation with this question_id in {a_path}")
        ann, a_where = answers[qid]
        given, raw = annotator_answers(ann.get("answers"), f"{a_where} (question_id {qid})")
        group = category(ann, "answer_type", VQA_TYPES, f"{a_where} (question_id {qid})")
        records.append(Record((image(field(q, "image_id", int, where)),), field(q, "question", str, where), most_common(given), where, given, group, raw))
    warn_unknown(records, a_path, "answer_type")
    return records


def vqav2(folder: Path, split: str) -> list[Record]:
    sub = "train2014" if split == "train" else "val2014"
    return _vqa(folder, "vqav2", f"v2_OpenEnded_mscoco_{sub}_questions.json", f"v2_mscoco_{sub}_annotations.json", lambda i: folder / sub / f"COCO_{sub}_{i:012d}.jpg")


def vqa_abstract(folder: Path, split: str) -> list[Record]:
    sub = "train2015" if split == "train" else "val2015"
    images = folder / f"scene_img_abstract_v002_{sub}"
    return _vqa(folder, "vqa_abstract", f"OpenEnded_abstract_v002_{sub}_questions.json", f"abstract_v002_{sub}_annotations.json", lambda i: images / f"abstract_v002_{sub}_{i:012d}.png")


# ---- VizWiz VQA: Annotations/{train,val}.json, a list of {image, question, answers, answer_type} --


def vizwiz(folder: Path, split: str) -> list[Record]:
    sub = "train" if split == "train" else "val"
    path = folder / "Annotations" / f"{sub}.json"
    records = []
    for i, item in enumerate(records_of(read_json(path, "vizwiz"), path, None)):
        where = f"{path}: record {i}"
        given, raw = annotator_answers(item.get("answers") if isinstance(item, dict) else None, where)
        image = folder / sub / field(item, "image", str, where)
        group = category(item, "answer_type", VIZWIZ_TYPES, where)
        records.append(Record((image,), field(item, "question", str, where), most_common(given), where, given, group, raw))
    warn_unknown(records, path, "answer_type")
    return records


# ---- GQA balanced questions: {question_id: {imageId, question, answer, types, ...}} ---------------


def gqa(folder: Path, split: str) -> list[Record]:
    path = folder / ("train_balanced_questions.json" if split == "train" else "testdev_balanced_questions.json")
    data = read_json(path, "gqa")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping question ids to questions")
    if not data:
        raise DataError(f"{path}: the file holds no questions")
    records = []
    for qid in sorted(data):  # a fixed order, whatever the file's
        item, where = data[qid], f"{path}: question {qid}"
        types = item.get("types") if isinstance(item, dict) else None
        if types is not None and not isinstance(types, dict):
            raise DataError(f"{where}: field 'types' is {types!r}, not an object such as {{\"structural\": \"query\"}}")
        group = category(types, "structural", GQA_TYPES, f"{where}: types") if types is not None else UNKNOWN
        image = folder / "images" / f"{field(item, 'imageId', str, where)}.jpg"
        records.append(Record((image,), field(item, "question", str, where), normalise(field(item, "answer", str, where)), where, None, group))
    warn_unknown(records, path, "types.structural")
    return records


# ---- COCO-QA: {train,test}/{questions,answers,img_ids,types}.txt, one line per question -----------

COCOQA_TYPES = ("object", "number", "color", "location")


def cocoqa(folder: Path, split: str) -> list[Record]:
    sub, images = ("train", "train2014") if split == "train" else ("test", "val2014")
    columns = {}
    for name in ("questions", "answers", "img_ids", "types"):
        path = folder / sub / f"{name}.txt"
        if not path.is_file():
            raise missing(path, "cocoqa")
        columns[name] = read_lines(path)
    sizes = {name: len(lines) for name, lines in columns.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{folder / sub}: questions/answers/img_ids/types.txt must have one line per question each, got {sizes}")
    if not columns["questions"]:
        raise DataError(f"{folder / sub}/questions.txt: the file holds no questions")
    records = []
    for i, (q, a, img, t) in enumerate(zip(*columns.values()), 1):
        where = f"{folder / sub}/questions.txt:{i}"
        if not q.strip() or not a.strip():
            raise DataError(f"{where}: empty question or answer (answers.txt:{i})")
        if not (img.strip().isascii() and img.strip().isdigit()):  # "²".isdigit() is True, int("²") fails
            raise DataError(f"{folder / sub}/img_ids.txt:{i}: image id {img!r} is not a number")
        if t.strip() not in ("0", "1", "2", "3"):
            raise DataError(f"{folder / sub}/types.txt:{i}: type {t!r} is not 0, 1, 2 or 3")
        image = folder / images / f"COCO_{images}_{int(img):012d}.jpg"
        records.append(Record((image,), q.strip(), normalise(a), where, None, COCOQA_TYPES[int(t)]))
    return records


def read_lines(path: Path) -> list[str]:
    """A text file's lines, or a DataError naming the file and line that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x})") from err


# ---- AQUA (art VQA on SemArt paintings): {train,test}.json lists ------------------------------------


def aqua(folder: Path, split: str) -> list[Record]:
    path = folder / f"{'train' if split == 'train' else 'test'}.json"
    records = []
    for i, item in enumerate(records_of(read_json(path, "aqua"), path, None)):
        where = f"{path}: record {i}"
        image = folder / "SemArt" / "Images" / field(item, "image", str, where)
        records.append(Record((image,), field(item, "question", str, where), normalise(field(item, "answer", str, where)), where, None, aqua_group(item, where)))
    warn_unknown(records, path, "need_external_knowledge")
    return records


def aqua_group(item: dict, where: str) -> str:
    """'knowledge' for QAs generated from a painting's comment (need_external_knowledge true),
    'visual' for QAs generated from the painting; UNKNOWN where the field is absent."""
    need = item.get("need_external_knowledge")
    if need is None:
        return UNKNOWN
    if not isinstance(need, bool) and need not in (0, 1):
        raise DataError(f"{where}: field 'need_external_knowledge' is {need!r}, not true or false")
    return "knowledge" if need else "visual"


# ---- CLOVE (CLVQA): json/{function,scene}/<name>_{train,val}.json lists ----------------------------

CLOVE_FUNCTIONS = {
    "attribute": "functional_attribute",
    "knowledge": "functional_knowledge",
    "logical": "functional_logical",
    "object": "functional_object",
    "relation": "functional_relation",
    "scenetext": "functional_scenetext",
}
CLOVE_SCENES = {
    "shop_dining": "scene_a#ShopAndDining",
    "workplace": "scene_b#Workplace",
    "home_hotel": "scene_c#HomeOrHotel",
    "transportation": "scene_d#Transportation",
    "sport_leisure": "scene_e#SportAndLeisure",
    "outdoors": "scene_f#Outdoors",
}


def clove(folder: Path, split: str, kind: str, name: str) -> list[Record]:
    stem = (CLOVE_FUNCTIONS if kind == "function" else CLOVE_SCENES)[name]
    path = folder / "json" / kind / f"{stem}_{'train' if split == 'train' else 'val'}.json"
    records = []
    for i, item in enumerate(records_of(read_json(path, "clove"), path, None)):
        where = f"{path}: record {i}"
        given, raw = annotator_answers(item.get("answers") if isinstance(item, dict) else None, where)
        source = field(item, "image_source", str, where)
        image_id = str(field(item, "image_id", (str, int), where))
        if source not in ("vg", "textvqa"):
            raise DataError(f"{where}: image_source {source!r} is not 'vg' or 'textvqa'")
        image = folder / ("vg/image" if source == "vg" else "textvqa") / f"{image_id}.jpg"
        records.append(Record((image,), field(item, "question", str, where), most_common(given), where, given, name, raw))
    return records


# ---- NLVR2: {train,dev}.json, JSON lines {identifier, sentence, label, directory} -------------------


def nlvr2(folder: Path, split: str) -> list[Record]:
    path = folder / ("train.json" if split == "train" else "dev.json")
    records = []
    for where, item in read_jsonl(path, "nlvr2"):
        identifier = field(item, "identifier", str, where)
        label = field(item, "label", str, where)
        if label.lower() not in ("true", "false"):  # the files write True/False; the NLVR2 README says true or false
            raise DataError(f"{where}: label {label!r} is not 'True' or 'False'")
        prefix = identifier.rsplit("-", 1)[0]  # train-10171-0-0 -> images train-10171-0-img0/1.png
        if split == "train":
            directory = folder / "images" / "train" / str(field(item, "directory", (int, str), where))
        else:
            directory = folder / "dev"
        images = (directory / f"{prefix}-img0.png", directory / f"{prefix}-img1.png")
        records.append(Record(images, field(item, "sentence", str, where), label.lower(), f"{where} ({identifier})"))
    return records


# ---- SNLI-VE: snli_ve_{train,test}.jsonl over Flickr30k images ---------------------------------------

SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")
# The image field as necla-ml/SNLI-VE's generators write it: the 2018 release (snli_ve_generator.py)
# adds "Flikr30kID": "3416050480.jpg" (sic); the current one (vet/tools/snli_ve_generator.py)
# adds "Flickr30K_ID": "3416050480", without the extension.
SNLI_VE_IMAGE_FIELDS = ("Flickr30K_ID", "Flikr30kID")


def snli_ve(folder: Path, split: str) -> list[Record]:
    path = folder / f"snli_ve_{'train' if split == 'train' else 'test'}.jsonl"
    records = []
    for where, item in read_jsonl(path, "snli_ve"):
        label = field(item, "gold_label", str, where)
        if label not in SNLI_VE_LABELS:
            raise DataError(f"{where}: gold_label {label!r} is not one of {', '.join(SNLI_VE_LABELS)}")
        image = folder / "flickr30k_images" / f"{snli_ve_image_id(item, where)}.jpg"
        records.append(Record((image,), field(item, "sentence2", str, where), label, where))
    return records


def snli_ve_image_id(item: dict, where: str) -> str:
    """The Flickr30k image id of a record in either release's format, without '.jpg'."""
    given = {name: item[name] for name in SNLI_VE_IMAGE_FIELDS if name in item}
    if not given:
        raise DataError(f"{where}: no image field: expected 'Flickr30K_ID' (current SNLI-VE generator) or 'Flikr30kID' (2018 release)")
    ids = set()
    for name in given:
        value = field(item, name, (str, int), where)
        ids.add(str(value).removesuffix(".jpg"))
    if len(ids) > 1:
        raise DataError(f"{where}: 'Flickr30K_ID' and 'Flikr30kID' name different images ({', '.join(sorted(ids))})")
    return ids.pop()
