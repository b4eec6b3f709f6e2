"""The BLIP backbone (backbones/blip.py) against Hugging Face's BlipForQuestionAnswering, on a
tiny random one saved to disk and loaded offline: decoder logits, the decoder's loss and greedy
generation through the wrapper's own loop equal HF's.

HF's text layers attend to the question's padding (blip.py's BLIP.run_block says why) and the
wrapper does not, so HF is always given unpadded questions; a padded question in the wrapper's
batch is compared with HF on that question alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feddat.backbones.base import AnswerTokens, trim_padding
from feddat.backbones.blip import BLIP, answer_logits, greedy_answer, save_random_blip

IMAGE = 32
LONG, SHORT = "what color is the big cube?", "how many?"  # SHORT is padded in a batch with LONG


@pytest.fixture(scope="module")
def tiny_blip_dir(tmp_path_factory):
    return save_random_blip(tmp_path_factory.mktemp("tiny-blip"), image_size=IMAGE)


@pytest.fixture(scope="module")
def blip(tiny_blip_dir):
    return BLIP.from_pretrained(tiny_blip_dir, image_size=IMAGE, max_text_len=12, max_answer_len=6)


@pytest.fixture(scope="module")
def hf(tiny_blip_dir):
    from transformers import BlipForQuestionAnswering

    return BlipForQuestionAnswering.from_pretrained(tiny_blip_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).randint(0, 256, (2, 40, 48, 3), dtype=np.uint8)


def pixels(blip, images):
    return blip.image_processor(list(images), return_tensors="pt")["pixel_values"]


def unpadded(blip, question):
    """One question's ids and mask, (1, its length): no padding for HF's layers to attend to."""
    ids, mask = trim_padding(*blip.tokenize([question]))
    assert mask.all()
    return ids, mask


@torch.no_grad()
def hf_decoder_logits(hf, pixel_values, ids, mask, answer_ids, answer_mask):
    """What BlipForQuestionAnswering.forward computes (it returns no logits), one answer per row."""
    image = hf.vision_model(pixel_values=pixel_values).last_hidden_state
    image_mask = torch.ones(image.shape[:2], dtype=torch.long)
    question = hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image, encoder_attention_mask=image_mask).last_hidden_state
    return hf.text_decoder(input_ids=answer_ids, attention_mask=answer_mask, encoder_hidden_states=question, encoder_attention_mask=mask).logits


def test_encode_images_is_the_vision_models_output(blip, hf, images):
    features = blip.encode_images(images)
    assert features.shape == (2, (IMAGE // 16) ** 2 + 1, 32) and features.dtype == torch.float32
    with torch.no_grad():
        expected = hf.vision_model(pixel_values=pixels(blip, images)).last_hidden_state
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    assert blip.cache_key().endswith(f"-{IMAGE}px") and "tiny-blip" in blip.cache_key()
    bigger = BLIP(blip.blip, blip.tokenizer, image_size=2 * IMAGE, source=blip.source)  # position embeddings interpolated
    assert bigger.encode_images(images).shape == (2, (2 * IMAGE // 16) ** 2 + 1, 32) and bigger.cache_key() != blip.cache_key()


def test_answer_tokens_start_with_the_decoders_start_token_and_end_with_sep(blip):
    ids, mask = blip.tokenize_answers(["red", "two cubes"])
    assert ids.shape == mask.shape == (2, blip.max_answer_len)
    assert (ids[:, 0] == blip.blip.config.text_config.bos_token_id).all() and blip.tokenizer.convert_ids_to_tokens(int(ids[0, 0])) == "[DEC]"
    assert ids[0, int(mask[0].sum()) - 1] == blip.tokenizer.sep_token_id and (ids[mask == 0] == blip.tokenizer.pad_token_id).all()
    questions, _ = blip.tokenize([LONG])
    assert questions[0, 0] == blip.tokenizer.cls_token_id  # as HF's BlipProcessor gives its forward


def test_teacher_forced_logits_equal_hf_with_shared_questions_and_padding(blip, hf, images):
    ids, mask = blip.tokenize([LONG, SHORT])
    assert not mask[1].all()  # SHORT is padded, even after trimming to LONG's length
    answer_ids, answer_mask = blip.tokenize_answers(["red", "two cubes", "blue"])
    owner = torch.tensor([0, 0, 1])  # two answers read against LONG
    with torch.no_grad():
        ours = answer_logits(blip, blip.encode_images(images), ids, mask, AnswerTokens(answer_ids, answer_mask, owner))
    assert ours.shape == (3, blip.max_answer_len, len(blip.tokenizer))
    pixel_values = pixels(blip, images)
    for q, question in enumerate([LONG, SHORT]):
        rows = (owner == q).nonzero().flatten()
        q_ids, q_mask = unpadded(blip, question)
        expected = hf_decoder_logits(hf, pixel_values[q : q + 1].expand(len(rows), -1, -1, -1), q_ids.expand(len(rows), -1), q_mask.expand(len(rows), -1), answer_ids[rows], answer_mask[rows])
        torch.testing.assert_close(ours[rows], expected, rtol=0, atol=1e-5)


def test_untrimmed_padding_changes_nothing(blip, images):
    ids, mask = blip.tokenize([LONG, SHORT])
    answers = AnswerTokens(*blip.tokenize_answers(["red", "blue"]), torch.tensor([0, 1]))
    features = blip.encode_images(images)
    with torch.no_grad():
        hidden, inputs = blip.embed(features, ids, mask, trim=False)
        assert hidden.shape[1] == blip.max_text_len
        for block in blip.blocks[: blip.decoder_start]:
            hidden = blip.run_block(block, hidden, inputs)
        hidden, inputs = blip.begin_decoding(hidden, inputs, answers)
        for block in blip.blocks[blip.decoder_start :]:
            hidden = blip.run_block(block, hidden, inputs)
        untrimmed = blip.pool(hidden, inputs.mask)
        torch.testing.assert_close(untrimmed, answer_logits(blip, features, ids, mask, answers), rtol=0, atol=1e-5)


def test_hf_loss_equals_cross_entropy_on_answer_token_labels(blip, hf, images):
    # HF's decoder loss: logits[:, :-1] against the input ids shifted by one, ignoring -100, mean
    # over every answer token of the batch, with the decoder's label smoothing.
    q_ids, q_mask = unpadded(blip, LONG)
    answer_ids, answer_mask = blip.tokenize_answers(["red", "two cubes", "blue"])
    answers = AnswerTokens(answer_ids, answer_mask, torch.tensor([0, 0, 0]))
    smoothing = 0.1
    reference = copy.deepcopy(hf)
    reference.text_decoder.label_smoothing = smoothing
    with torch.no_grad():
        ours = answer_logits(blip, blip.encode_images(images[:1]), q_ids, q_mask, answers)
        hf_loss = reference(
            input_ids=q_ids.expand(3, -1), pixel_values=pixels(blip, images[:1]).expand(3, -1, -1, -1), attention_mask=q_mask.expand(3, -1),
            decoder_input_ids=answer_ids, decoder_attention_mask=answer_mask, labels=answer_ids.masked_fill(answer_mask == 0, -100),
        ).loss
    loss = F.cross_entropy(ours.flatten(0, 1), answers.labels().flatten(), ignore_index=-100, label_smoothing=smoothing)
    torch.testing.assert_close(loss, hf_loss, rtol=0, atol=1e-5)
    assert abs(F.cross_entropy(ours.flatten(0, 1), answers.labels().roll(1, 1).flatten(), label_smoothing=smoothing) - hf_loss) > 1e-3


def assert_greedy_equals_hf_generate(blip, hf, images, steps):
    ids, mask = blip.tokenize([LONG, SHORT])
    ours = greedy_answer(blip, blip.encode_images(images), ids, mask, steps)
    assert ours.shape[1] <= steps + 1 and (ours[:, 0] == blip.start_token_id).all()
    pixel_values = pixels(blip, images)
    for q, question in enumerate([LONG, SHORT]):
        q_ids, q_mask = unpadded(blip, question)
        expected = hf.generate(pixel_values=pixel_values[q : q + 1], input_ids=q_ids, attention_mask=q_mask, num_beams=1, do_sample=False, max_new_tokens=steps)[0]
        assert ours[q, : len(expected)].tolist() == expected.tolist()
        assert (ours[q, len(expected) :] == blip.pad_token_id).all()  # the batch went on for the other row
    return ours


def test_greedy_answer_equals_hf_generate(blip, hf, images):
    ours = assert_greedy_equals_hf_generate(blip, hf, images, steps=5)
    assert ours[0].tolist() != ours[1].tolist()  # the answers depend on the image and question


def test_greedy_answer_ends_rows_as_hf_generate_does(blip, hf, images):
    # Raise [SEP]'s logit just enough that it wins at the one step where it came closest, so
    # that one row ends there and the other goes on.
    blip, hf, steps = copy.deepcopy(blip), copy.deepcopy(hf), 5
    ids, mask = blip.tokenize([LONG, SHORT])
    features = blip.encode_images(images)
    with torch.no_grad():
        tokens = greedy_answer(blip, features, ids, mask, steps)
        logits = answer_logits(blip, features, ids, mask, AnswerTokens(tokens, torch.ones_like(tokens), torch.arange(2)))[:, :steps]
        lift = (logits.max(-1).values - logits[..., blip.end_token_id]).min() + 1e-3
        for model in (blip.blip, hf):
            model.text_decoder.cls.predictions.decoder.bias[blip.end_token_id] += lift
    ours = assert_greedy_equals_hf_generate(blip, hf, images, steps)
    ended = (ours == blip.end_token_id).any(1)
    assert ended.sum() == 1 and ours.shape[1] == steps + 1


def test_blocks_are_the_layers_that_run(blip, images):
    hf_layers = [*blip.blip.text_encoder.encoder.layer, *blip.blip.text_decoder.bert.encoder.layer]
    assert blip.decoder_start == 2 and len(blip.blocks) == 4 and all(a is b for a, b in zip(blip.blocks, hf_layers))
    ids, mask = blip.tokenize([LONG])
    answers = AnswerTokens(*blip.tokenize_answers(["red"]), torch.tensor([0]))
    features = blip.encode_images(images[:1])
    with torch.no_grad():
        before = answer_logits(blip, features, ids, mask, answers)
        original = blip.blocks[3]
        changed = copy.deepcopy(original)
        changed.output.dense.weight.mul_(2)
        blip.blocks[3] = changed
        try:
            after = answer_logits(blip, features, ids, mask, answers)
        finally:
            blip.blocks[3] = original
    assert not torch.allclose(before, after) and blip.blip.text_decoder.bert.encoder.layer[1] is original


def test_saved_tiny_blip_loads_offline_and_a_bad_path_is_named(tiny_blip_dir, tmp_path):
    from transformers import BlipForQuestionAnswering

    from feddat.backbones import BACKBONES, build_backbone

    backbone = build_backbone("blip", tiny_blip_dir, image_size=IMAGE, max_text_len=12)
    assert "blip" in BACKBONES and isinstance(backbone, BLIP) and backbone.hidden_size == 32 and backbone.max_text_len == 12
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training
    assert backbone.tokenizer.bos_token == "[DEC]" and backbone.tokenizer.convert_tokens_to_ids("[ENC]") == 30523
    BlipForQuestionAnswering.from_pretrained(tiny_blip_dir, local_files_only=True)
    missing = tmp_path / "no-such-blip"
    with pytest.raises(OSError, match="no-such-blip"):
        BLIP.from_pretrained(str(missing))
    with pytest.raises(ValueError, match="encoder_blocks"):
        save_random_blip(tmp_path / "uneven", encoder_blocks=2, decoder_blocks=1)
