"""`feddat pretrain`: vision-language pretraining in miniature, offline (docs/design.md §8a).

Masked-word prediction from the image and image-text matching with hard negatives, on the
procedural caption corpus (pretrain/corpus.py) or your own image-caption pairs, starting from
the packaged MiniLM and EfficientNet-Lite0 (or a Hugging Face text encoder and vision tower).
The result is a foundation checkpoint (backbones/foundation.py) that `feddat run` loads with
`--backbone.name foundation --backbone.path DIR`.

Deterministic: every step's batch is a function of (seed, step), and the run state (trainable
tensors, optimiser moments, step) is committed every `save_every` steps, so `--resume` after a
crash continues to the same checkpoint an uninterrupted run makes, given the same threads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from feddat.backbones.foundation import (
    IMAGE_POSITION,
    PACKAGED_VISION,
    grid_side,
    load_text_encoder,
    load_vision_tower,
    save_checkpoint,
)
from feddat.data.types import DataError
from feddat.pretrain import corpus as C
from feddat.pretrain.data import IGNORE, Batch, Batcher, Corpus, Schedule, Tokens, collate, folder_corpus, synthetic_corpus
from feddat.pretrain.model import PretrainModel
from feddat.runtime import clean_partial_writes, derive_seed, environment, load_tensors, read_json, save_tensors, set_threads, uses_bf16, write_json

STATE_DIR = "state"
LOG_FILE = "log.jsonl"


# ---------------------------------------------------------------------------
# Setting up
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    model: PretrainModel
    tokens: Tokens
    corpus: Corpus
    heldout: dict[str, Corpus]
    batcher: Batcher
    text_digest: str
    vision_digest: str
    feature_dim: int


def build(p, log: Callable[[str], None] = print) -> Setup:
    """Model, tokens, corpus features (cached) and held-out sets for the [pretrain] config `p`."""
    torch.manual_seed(derive_seed(p.seed, "init"))
    # SDPA, as the packaged checkpoint was built: its card's rebuild command is bit for bit.
    encoder, tokenizer, text_digest = load_text_encoder(p.text_encoder, attention="sdpa")
    tower, vision_digest = load_vision_tower(p.vision_tower)
    tower.eval().requires_grad_(False)
    cache_dir = Path(p.cache_dir) if p.cache_dir else None
    tower_key = f"{p.vision_tower}:{vision_digest}"
    log(f"feddat pretrain: corpus {p.corpus} ({'root ' + p.root if p.corpus == 'folder' else f'{p.corpus_size} scenes, styles {p.styles}'}), image features cached under {cache_dir}")
    if p.corpus == "folder":
        pairs = folder_corpus(p.root, tower, tower_key, p.image_size, cache_dir, log)
        tokens = Tokens(tokenizer, None, p.max_caption_len)
        tokens.set_vocab({i for c in pairs.captions for i in tokenizer(c, truncation=True, max_length=p.max_caption_len)["input_ids"]} - set(tokenizer.all_special_ids))
        if not tokens.vocab_ids:
            from feddat.pretrain.folder import captions_file

            raise DataError(f"{captions_file(Path(p.root))}: no caption has a word the text encoder '{p.text_encoder}' knows (every token is [UNK] or a special token): "
                            "there is no word to mask, and matching would only compare [UNK]s; write the captions in the text encoder's language and script")
        held = min(p.eval_size, len(pairs) // 10)  # the last pairs, never trained on
        corpus = pairs.subset(range(len(pairs) - held)) if held >= 2 else pairs
        heldout = {"held-out pairs": pairs.subset(range(len(pairs) - held, len(pairs)))} if held >= 2 else {}
    else:
        corpus = synthetic_corpus(p.corpus_size, p.corpus_seed, p.styles, p.max_objects, tower, tower_key, p.image_size, cache_dir, log)
        tokens = Tokens(tokenizer, C.vocabulary(), p.max_caption_len)
        other = [s for s in C.STYLES if s not in p.styles]
        heldout = {}
        if p.eval_size:
            heldout["pretraining styles"] = synthetic_corpus(p.eval_size, derive_seed(p.corpus_seed, "heldout") % 2**31, p.styles, p.max_objects, tower, tower_key, p.image_size, cache_dir, None)
        if other and p.eval_size:
            heldout["other styles"] = synthetic_corpus(p.eval_size, derive_seed(p.corpus_seed, "heldout-other") % 2**31, other, p.max_objects, tower, tower_key, p.image_size, cache_dir, None)
    feature_dim = int(corpus.features.shape[-1])
    model = PretrainModel(encoder, feature_dim, grid_side(p.image_size) ** 2, tokens.vocab_ids, p.tune, p.lora_rank, p.lora_alpha)
    schedule = Schedule(p.steps, p.curriculum, p.hard_negatives, p.hard_warmup)
    batcher = Batcher(corpus, tokens, p.seed, p.batch_size, p.mlm_fraction, p.mask_prob, schedule)
    return Setup(model, tokens, corpus, heldout, batcher, text_digest, vision_digest, feature_dim)


def optimiser(model: PretrainModel, p) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.trainable().items():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name.split(".")[-2:][0] else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.98), eps=1e-8)


def learning_rate(step: int, p) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    warm = max(1, int(p.warmup * p.steps))
    if step < warm:
        return p.lr * (step + 1) / warm
    progress = (step - warm) / max(1, p.steps - warm)
    return p.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def resolved_precision(precision: str) -> str:
    """pretrain.precision auto: bf16 where the CPU computes it natively, float32 elsewhere."""
    return "bf16" if uses_bf16(torch.device("cpu"), precision) else "fp32"


def autocast(p):
    import contextlib

    if p.precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------
# One step
# ---------------------------------------------------------------------------


def losses(model: PretrainModel, features: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    hidden = model(features, batch.input_ids, batch.attention_mask)
    n_text = batch.input_ids.shape[1]
    masked = batch.mlm_labels >= 0
    out: dict[str, torch.Tensor] = {}
    if masked.any():
        logits = model.mlm(hidden[:, :n_text][masked]).float()
        out["mlm"] = F.cross_entropy(logits, batch.mlm_labels[masked])
        out["mlm_acc"] = (logits.argmax(-1) == batch.mlm_labels[masked]).float().mean()
    rows = batch.itm_labels >= 0
    if rows.any():
        logits = model.itm(hidden[rows, 0]).float()
        out["itm"] = F.cross_entropy(logits, batch.itm_labels[rows])
        out["itm_acc"] = (logits.argmax(-1) == batch.itm_labels[rows]).float().mean()
    return out


def train_step(setup: Setup, opt: torch.optim.Optimizer, step: int, p) -> dict[str, float]:
    model = setup.model.train()  # the encoder's dropout (BERT's 0.1) is on while pretraining
    torch.manual_seed(derive_seed(p.seed, "dropout", step))  # so a resumed run draws the same masks
    batch = setup.batcher.batch(step)
    for group in opt.param_groups:
        group["lr"] = learning_rate(step, p)
    with autocast(p):
        parts = losses(model, setup.corpus.features[batch.index], batch)
        if "mlm" not in parts and "itm" not in parts:
            raise DataError(nothing_to_learn(setup, batch, step, p))
        loss = parts.get("mlm", 0.0) + p.itm_weight * parts.get("itm", 0.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.trainable().values()), 1.0)
    opt.step()
    return {"loss": float(loss.detach())} | {k: float(v.detach()) for k, v in parts.items()}


def nothing_to_learn(setup: Setup, batch: Batch, step: int, p) -> str:
    """Why step `step` has no loss: every example is masked-word prediction (mlm_fraction 1)
    and none of their captions has a word of the vocabulary to mask."""
    corpus = setup.corpus
    where = f"pretrain.root {p.root}" if corpus.captions is not None else f"the {corpus.description.get('kind', '')} corpus"
    captions = list(dict.fromkeys(corpus.captions[int(i)] for i in batch.index)) if corpus.captions is not None else []
    shown = ", ".join(repr(c[:60]) for c in captions[:3]) + (f" and {len(captions) - 3} more" if len(captions) > 3 else "")
    return (f"{where}: step {step + 1}'s batch has nothing to learn from: no matching examples (pretrain.mlm_fraction {p.mlm_fraction}) and its captions"
            f"{' ' + shown if shown else ''} have no word in the vocabulary of the text encoder '{p.text_encoder}' (only [UNK] or special tokens) to mask; "
            "fix or drop those captions, or lower pretrain.mlm_fraction")


# ---------------------------------------------------------------------------
# Held-out grounding
# ---------------------------------------------------------------------------


def masked_row(i: int, ids: list[int], roles: list[str], rng: np.random.Generator, tokens: Tokens) -> tuple | None:
    """(image, ids with one role word masked, its role, labels), or None if no word has a role."""
    maskable = [k for k, r in enumerate(roles) if r and ids[k] in tokens.position]
    if not maskable:
        return None
    k = maskable[int(rng.integers(len(maskable)))]
    masked, label = list(ids), [IGNORE] * len(ids)
    masked[k], label[k] = tokens.mask, tokens.position[ids[k]]
    return i, masked, roles[k], label


def heldout_rows(held: Corpus, tokens: Tokens, seed: int) -> tuple[list, list]:
    """Masked-word rows (one role word masked per caption) and matching rows (the true caption;
    a hard negative and another image's caption where the corpus has scenes, else the latter)."""
    mlm_rows, itm_rows = [], []
    n = len(held)
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, i]))
        if held.scenes is None:
            ids, roles = tokens.text(held.captions[i])
            negatives = [(tokens.text(held.captions[(i + 1 + int(rng.integers(n - 1))) % n])[0], "swap")]
        else:
            scene = held.scenes[i]
            caption = C.true_caption(scene, rng)
            ids, roles = tokens.words(caption.words)
            hard = C.hard_negative(scene, caption, rng)
            easy = C.easy_negative(scene, [held.scenes[int(j)] for j in rng.integers(n, size=4)], rng)
            negatives = [(tokens.words(c.words)[0], c.changed) for c in (hard, easy) if c is not None]
        row = masked_row(i, ids, roles, rng, tokens)
        if row is not None:
            mlm_rows.append(row)
        itm_rows += [(i, ids, "match", 1)] + [(i, neg, kind, 0) for neg, kind in negatives]
    return mlm_rows, itm_rows


@torch.no_grad()
def evaluate(setup: Setup, p, batch_size: int = 128) -> dict:
    """On held-out images: masked-word accuracy per role with the true image and with another
    image (what the text alone gives), and matching accuracy per kind of negative."""
    model, tokens = setup.model, setup.tokens
    model.eval()
    report = {}
    for name, held in setup.heldout.items():
        n = len(held)
        mlm_rows, itm_rows = heldout_rows(held, tokens, p.seed)
        result: dict = {"mlm": {}, "mlm_shuffled": {}, "itm": {}}
        for shuffled in (False, True):
            hits: dict[str, list[float]] = {}
            for start in range(0, len(mlm_rows), batch_size):
                chunk = mlm_rows[start : start + batch_size]
                index = [(i + 1) % n if shuffled else i for i, *_ in chunk]  # another scene's image
                batch = collate(index, [(ids, []) for _, ids, _, _ in chunk], [lab for *_, lab in chunk], [IGNORE] * len(chunk), tokens.pad)
                with autocast(p):
                    hidden = model(held.features[batch.index], batch.input_ids, batch.attention_mask)
                    pred = model.mlm(hidden[:, : batch.input_ids.shape[1]][batch.mlm_labels >= 0]).float().argmax(-1)
                for (_, _, role, _), ok in zip(chunk, (pred == batch.mlm_labels[batch.mlm_labels >= 0]).tolist()):
                    hits.setdefault(role, []).append(float(ok))
            result["mlm_shuffled" if shuffled else "mlm"] = {r: round(100 * float(np.mean(v)), 1) for r, v in sorted(hits.items())}
        hits = {}
        for start in range(0, len(itm_rows), batch_size):
            chunk = itm_rows[start : start + batch_size]
            batch = collate([i for i, *_ in chunk], [(ids, []) for _, ids, _, _ in chunk], [[IGNORE] * len(ids) for _, ids, _, _ in chunk], [lab for *_, lab in chunk], tokens.pad)
            with autocast(p):
                hidden = model(held.features[batch.index], batch.input_ids, batch.attention_mask)
                pred = model.itm(hidden[:, 0]).float().argmax(-1)
            for (_, _, kind, _), ok in zip(chunk, (pred == batch.itm_labels).tolist()):
                hits.setdefault(kind, []).append(float(ok))
        result["itm"] = {k: round(100 * float(np.mean(v)), 1) for k, v in sorted(hits.items())}
        report[name] = result
    model.train()
    return report


def format_eval(report: dict) -> str:
    lines = []
    for name, r in report.items():
        mlm = ", ".join(f"{k} {v:.0f} ({r['mlm_shuffled'].get(k, float('nan')):.0f})" for k, v in r["mlm"].items())
        itm = ", ".join(f"{k} {v:.0f}" for k, v in r["itm"].items())
        lines.append(f"  held-out, {name}: MLM % (shuffled images) {mlm}; ITM % {itm}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# State, resume, checkpoint
# ---------------------------------------------------------------------------


class StateError(ValueError):
    """A pretraining run state that cannot be resumed (names the file and what is wrong)."""


def data_fingerprint(setup: Setup) -> dict:
    """What the run trains on besides its recipe: the corpus and held-out sets (a folder corpus's
    sha256 covers captions.jsonl and every image) and the base weights' digests."""
    described = {"corpus": setup.corpus.description, "heldout": {k: v.description for k, v in setup.heldout.items()},
                 "text_encoder": setup.text_digest, "vision_tower": setup.vision_digest}
    return json.loads(json.dumps(described))  # as progress.json holds it


def check_data(progress: dict, now: dict, where: Path) -> None:
    """Refuse to resume on data other than the run started with (DataError naming what changed)."""
    then = progress.get("data")
    if not isinstance(then, dict):
        return  # written before progress.json recorded the data (see pretrain()): cannot check
    changed = []
    for key, what in (("corpus", "the corpus"), ("heldout", "the held-out sets"), ("text_encoder", "the text encoder's weights"), ("vision_tower", "the vision tower's weights")):
        if key == "heldout" and changed:
            continue  # drawn from the same data: said already
        if key in now and then.get(key) != now[key]:
            was, is_ = then.get(key), now[key]
            if key == "corpus" and isinstance(was, dict) and was.get("kind") == "folder" == is_.get("kind"):
                what = f"the captions or images under {is_.get('root')} (sha256 {str(was.get('sha256'))[:12]}… then, {str(is_.get('sha256'))[:12]}… now)"
            elif isinstance(was, str) and isinstance(is_, str):
                what += f" ({was[:12]}… then, {is_[:12]}… now)"
            changed.append(what)
    if changed:
        raise DataError(f"{where}: the data changed since this run's last committed step: {'; '.join(changed)}. "
                        "A resumed run must continue on the data it started with: restore them, or start a new run with another --pretrain.out")


def save_state(out: Path, setup: Setup, opt: torch.optim.Optimizer, step: int, p, wall: float, threads: int, window: list[dict] | None = None) -> None:
    """Trainable tensors and AdamW moments by name in a file of this step's own, then
    progress.json naming it (the commit point): a crash between the two leaves the previous
    step's pair intact, never tensors of one step beside the progress of another. progress.json
    also holds the data's fingerprint (a resume on other data is refused) and the step records
    not yet averaged into a log line (a resume logs the same means as an uninterrupted run)."""
    names = {id(v): k for k, v in setup.model.trainable().items()}
    tensors = {f"param.{k}": v for k, v in setup.model.trainable().items()}
    for group in opt.param_groups:
        for param in group["params"]:
            state = opt.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"{key}.{names[id(param)]}"] = state[key]
            if "step" in state:
                tensors[f"step.{names[id(param)]}"] = torch.as_tensor(state["step"]).float().reshape(1)
    state_dir = out / STATE_DIR
    name = f"state-{step:07d}.safetensors"
    save_tensors(state_dir / name, tensors, metadata={"step": str(step)})
    write_json(state_dir / "progress.json", {"step": step, "wall_s": wall, "tensors": name, "threads": threads, "config": dataclasses.asdict(p),
                                             "data": data_fingerprint(setup), "window": list(window or [])})
    for old in state_dir.glob("state*.safetensors"):
        if old.name != name:
            old.unlink()


def load_state(out: Path, setup: Setup, opt: torch.optim.Optimizer) -> tuple[int, float]:
    """Restore the committed run state: (step, wall seconds spent up to it)."""
    from feddat.peft.model import check_state

    progress = read_json(out / STATE_DIR / "progress.json")
    check_data(progress, data_fingerprint(setup), out / STATE_DIR / "progress.json")
    path = out / STATE_DIR / progress.get("tensors", "state.safetensors")
    try:
        tensors = load_tensors(path)
    except Exception as err:  # missing or truncated: say which file
        raise StateError(f"{path}: cannot be read ({err}); the run cannot resume from step {progress['step']}") from err
    params = setup.model.trainable()
    problem = check_state({k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}, params)
    if problem:
        raise StateError(f"{path}: does not fit this recipe's trainable tensors: {problem}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"param.{name}"])
    for name, param in params.items():
        if f"exp_avg.{name}" in tensors:
            opt.state[param] = {"exp_avg": tensors[f"exp_avg.{name}"].clone(), "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].clone(), "step": tensors[f"step.{name}"].reshape(()).clone()}
    return int(progress["step"]), float(progress.get("wall_s", 0.0))


def card(setup: Setup, p, report: dict, curve: list[dict], wall: float, threads: int) -> dict:
    return {
        "text_encoder": {"source": p.text_encoder, "sha256": setup.text_digest, "hidden": setup.model.encoder.config.hidden_size, "blocks": setup.model.encoder.config.num_hidden_layers},
        "vision_tower": {"source": p.vision_tower, "sha256": setup.vision_digest, "feature_dim": setup.feature_dim, "stages": "stride 8, 16, 32" if p.vision_tower == PACKAGED_VISION else "last hidden patch tokens"},
        "image_size": p.image_size,
        "grid": grid_side(p.image_size),
        "image_position": IMAGE_POSITION,
        "pool": p.pool,
        "tune": p.tune,
        "lora": setup.model.lora if p.tune == "lora" else None,
        "recipe": dataclasses.asdict(p),
        "corpus": setup.corpus.description,
        "seed": p.seed,
        "losses": curve,
        "heldout": report,
        "cost": {"steps": p.steps, "train_wall_s": round(wall, 1), "threads": threads},
        "environment": environment(),
        "rebuild": write_recipe(Path(p.out), p, threads),
    }


RECIPE_FILE = "recipe.toml"
#: Keys that do not change what is computed (where it goes, how often it reports).
NOT_RECIPE = ("out", "cache_dir", "log_every", "eval_every")


def write_recipe(out: Path, p, threads: int) -> str:
    """recipe.toml beside the checkpoint, and the command that rebuilds it bit for bit from it
    (same thread count, recorded; same CPU and package versions, docs/guide/running.md, "Same seed, same numbers")."""
    import tomli_w

    from feddat.runtime import write_text

    recipe = {k: v for k, v in dataclasses.asdict(p).items() if k not in NOT_RECIPE} | {"threads": threads}
    write_text(out / RECIPE_FILE, tomli_w.dumps({"pretrain": recipe}))
    return f"feddat pretrain --config {out / RECIPE_FILE} --pretrain.out DIR"


def read_log(path: Path, up_to: int) -> list[dict]:
    """log.jsonl's records up to step `up_to`; a line cut short by a crash is dropped."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", up_to + 1) <= up_to:
            records.append(record)
    return records


def committed_window(progress: dict) -> list[dict]:
    """The step records after the last log line up to the committed step (none in a
    progress.json written before it kept them: that resume's first log line averages fewer steps)."""
    window = progress.get("window")
    if not isinstance(window, list):
        return []
    return [r for r in window if isinstance(r, dict) and all(isinstance(v, (int, float)) for v in r.values())]


def pretrain(p, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run pretraining as configured by `p` (config.PretrainConfig); returns the checkpoint folder."""
    from feddat.runtime import write_text

    out = Path(p.out)
    if not resume and (out / STATE_DIR / "progress.json").exists():
        raise FileExistsError(f"{out} holds a pretraining run already: continue it with `feddat pretrain --resume {out}` or choose another --pretrain.out")
    dropped = clean_partial_writes(out)
    if dropped:
        log(f"feddat pretrain: removed {dropped} half-written temporary file(s) an interrupted run left in {out}")
    threads = p.threads if p.threads > 0 else max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    set_threads(threads)
    p = dataclasses.replace(p, precision=resolved_precision(p.precision))  # the recipe records what ran
    progress: dict = {}
    if resume:
        progress = read_json(out / STATE_DIR / "progress.json")
        if not isinstance(progress, dict):
            raise StateError(f"{out / STATE_DIR / 'progress.json'} is not a pretraining run's progress (was it edited?); it cannot be resumed")
        if not isinstance(progress.get("data"), dict):
            log(f"feddat pretrain: {out / STATE_DIR / 'progress.json'} predates data fingerprints: cannot check that the corpus and encoders are the ones the run started with")
        elif p.corpus == "folder":  # before the images are encoded: a changed folder is refused at once
            from feddat.pretrain.folder import read_pairs

            then = progress["data"].get("corpus")
            if isinstance(then, dict) and then.get("kind") == "folder":
                check_data(progress, {"corpus": {**then, "sha256": read_pairs(Path(p.root))[3]}}, out / STATE_DIR / "progress.json")
    setup = build(p, log)
    opt = optimiser(setup.model, p)
    start, spent, window = 0, 0.0, []
    if resume:
        start, spent = load_state(out, setup, opt)
        window = committed_window(progress) if progress.get("step") == start else []
        log(f"feddat pretrain: resuming {out} at step {start}/{p.steps}")
    n_train = sum(v.numel() for v in setup.model.trainable().values())
    log(f"feddat pretrain: {p.tune} ({n_train:,} trainable), {p.steps} steps of {p.batch_size}, {threads} thread(s), {p.precision}")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in read_log(log_path, start)))  # drop what was logged after the committed step
    t0 = time.time()
    for step in range(start, p.steps):
        record = train_step(setup, opt, step, p)
        window.append(record)
        if (step + 1) % p.log_every == 0 or step + 1 == p.steps:
            mean = {k: round(float(np.mean([r[k] for r in window if k in r])), 4) for k in window[-1]}
            elapsed = time.time() - t0
            rate = elapsed / (step + 1 - start)
            log(f"  step {step + 1}/{p.steps}  loss {mean['loss']:.3f}  MLM {mean.get('mlm_acc', 0) * 100:.0f}%  ITM {mean.get('itm_acc', 0) * 100:.0f}%  {rate:.2f} s/step  ETA {rate * (p.steps - step - 1) / 60:.0f} min")
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step + 1, **mean, "s_per_step": round(rate, 3)}) + "\n")
            window = []
        if (step + 1) % p.save_every == 0 and step + 1 < p.steps:
            save_state(out, setup, opt, step + 1, p, spent + time.time() - t0, threads, window)
        if p.eval_every and (step + 1) % p.eval_every == 0 and step + 1 < p.steps and setup.heldout:
            log(format_eval(evaluate(setup, p)))
    train_wall = spent + time.time() - t0
    save_state(out, setup, opt, p.steps, p, train_wall, threads)
    if p.store == "fp16":  # the report below then describes exactly what the checkpoint holds
        with torch.no_grad():
            stored = [*setup.model.trainable().values(), *(setup.model.encoder.parameters() if p.tune == "full" else ())]
            for param in stored:
                param.copy_(param.half().float())
    report = evaluate(setup, p) if setup.heldout else {}
    if report:
        log(format_eval(report))
    curve = read_log(log_path, p.steps)
    dtype = torch.float16 if p.store == "fp16" else torch.float32
    save_checkpoint(out, {k: v.to(dtype) for k, v in setup.model.checkpoint_tensors().items()}, card(setup, p, report, curve, train_wall, threads))
    log(f"feddat pretrain: foundation checkpoint written to {out} (use it with --backbone.name foundation --backbone.path {out})")
    return out
