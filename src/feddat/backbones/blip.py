"""blip: Hugging Face BlipForQuestionAnswering (Salesforce/blip-vqa-base) as an answer-decoder
backbone. The frozen part cached per image is the vision model's output (the image embeddings);
`blocks` are the text encoder's layers (self-attention over the question, cross-attention to the
image) followed by the text decoder's (causal self-attention over the answer, cross-attention to
the question's states), and `pool` is the decoder's LM head: token logits.

As Hugging Face's BlipForQuestionAnswering, the question keeps the tokenizer's [CLS] first (HF
does not put the original BLIP's [ENC] there). Unlike it, the decoder does not attend to the
question's padding (`BLIP.run_block` says why): outputs equal HF's for unpadded questions, and do
not change with padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from feddat.backbones.base import AnswerTokens, Backbone, BlockInputs, greedy_decode, load_hugging_face, trim_padding


class BLIP(Backbone):
    feature_rank = 2  # cached features are the image embeddings, (patches + 1) x vision width

    def __init__(self, model: nn.Module, tokenizer, image_size: int = 384, max_text_len: int = 35, max_answer_len: int = 10, source: str = "config"):
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

        super().__init__()
        self.blip = model
        self.tokenizer = tokenizer
        text = model.config.text_config
        self.hidden_size = text.hidden_size
        self.image_size = image_size
        self.max_text_len = min(max_text_len, text.max_position_embeddings)
        self.max_answer_len = min(max_answer_len, text.max_position_embeddings)
        self.source = source
        self.start_token_id = text.bos_token_id  # [DEC]: what HF's generate starts the answer with
        self.end_token_id = text.sep_token_id  # [SEP]: where generate stops
        self.pad_token_id = text.pad_token_id
        self.vocab_size = text.vocab_size  # of the decoder's token logits
        self.label_smoothing = text.label_smoothing  # of HF's decoder loss
        # BLIP's own preprocessing (bicubic resize, CLIP mean/std), in its PIL variant: torchvision
        # is not a dependency.
        self.image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
        encoder_layers = list(model.text_encoder.encoder.layer)
        # Our own list of the same layer objects, which the loop runs: adapter sites replace its
        # entries, and HF's encoder/decoder lists (used only by HF's own forward) stay as they are.
        self.text_layers = nn.ModuleList(encoder_layers + list(model.text_decoder.bert.encoder.layer))
        self.decoder_start = len(encoder_layers)
        self.freeze()

    @classmethod
    def from_pretrained(cls, path: str, image_size: int = 384, max_text_len: int = 35, max_answer_len: int = 10) -> "BLIP":
        """`path`: a hub id (needs a network, or the hub cache) or a folder with config, weights and tokenizer."""
        from transformers import BlipForQuestionAnswering

        model, tokenizer = load_hugging_face(BlipForQuestionAnswering, path, "BLIP", "Salesforce/blip-vqa-base")
        return cls(model, tokenizer, image_size=image_size, max_text_len=max_text_len, max_answer_len=max_answer_len, source=path)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.text_layers

    def cache_key(self) -> str:
        return f"blip-{self.source.replace('/', '_')}-{self.image_size}px"

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        vision = self.blip.vision_model
        pixels = self.image_processor(list(images), return_tensors="pt")["pixel_values"]
        device = next(vision.parameters()).device
        # Another side than the checkpoint's interpolates its position embeddings, as HF's flag does.
        resized = self.image_size != vision.config.image_size
        # float32: the cross-attention reads these directly, and they must equal what HF computes
        return vision(pixel_values=pixels.to(device), interpolate_pos_encoding=resized).last_hidden_state.float().cpu()

    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # As BlipProcessor: [CLS] question [SEP], right-padded; HF's forward uses the ids as given.
        enc = self.tokenizer(questions, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def tokenize_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # The original BLIP's answer ids: the tokenizer's [CLS] replaced by the decoder's start
        # token, which generate also starts from; the [SEP] at the end is what it stops on.
        too_long = [(a, len(ids)) for a, ids in zip(answers, self.tokenizer(list(answers), truncation=False)["input_ids"]) if len(ids) > self.max_answer_len]
        if too_long:
            answer, n = too_long[0]
            raise ValueError(f"answer {answer!r} is {n} tokens with the decoder's start and end ({len(too_long)} answer(s) are), over backbone.max_answer_len = {self.max_answer_len}: raise it (this decoder reads up to {self.blip.config.text_config.max_position_embeddings})")
        enc = self.tokenizer(answers, padding="max_length", truncation=True, max_length=self.max_answer_len, return_tensors="pt")
        ids = enc["input_ids"].clone()
        ids[:, 0] = self.start_token_id
        return ids, enc["attention_mask"]

    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, BlockInputs]:
        """What BlipTextModel does before its first layer, for the question read against the image."""
        from transformers.masking_utils import create_bidirectional_mask

        if trim:
            input_ids, attention_mask = trim_padding(input_ids, attention_mask)  # the image has no positions
        encoder = self.blip.text_encoder
        hidden = encoder.embeddings(input_ids=input_ids)
        memory = image_features.float()
        image_mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        attention = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
        memory_attention = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=image_mask, encoder_hidden_states=memory)
        return hidden, BlockInputs(attention_mask, attention, memory, memory_attention)

    @staticmethod
    def run_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """BlipTextLayer.forward with its cross-attention masked. transformers 5's
        BlipTextAttention does not hand `encoder_attention_mask` on, so HF's layers attend to the
        question's padding (their outputs then depend on how far a batch is padded); the original
        BLIP masks it, and so do we. Every layer cross-attends: to the image or to the question."""
        attended, _ = block.attention(hidden, attention_mask=inputs.attention)
        context, _ = block.crossattention.self(attended, encoder_hidden_states=inputs.memory, encoder_attention_mask=inputs.memory_attention)
        return block.feed_forward_chunk(block.crossattention.output(context, attended))

    def begin_decoding(self, hidden: torch.Tensor, inputs: BlockInputs, answers: AnswerTokens) -> tuple[torch.Tensor, BlockInputs]:
        """What BlipTextLMHeadModel does before its first layer, for the answers read against the
        encoder's states of their questions."""
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

        decoder = self.blip.text_decoder.bert
        states = decoder.embeddings(input_ids=answers.ids)
        memory, memory_mask = hidden[answers.owner], inputs.mask[answers.owner]
        attention = create_causal_mask(config=decoder.config, inputs_embeds=states, attention_mask=answers.mask, past_key_values=None)
        memory_attention = create_bidirectional_mask(config=decoder.config, inputs_embeds=states, attention_mask=memory_mask, encoder_hidden_states=memory)
        return states, BlockInputs(answers.mask, attention, memory, memory_attention)

    def decode_answers(self, tokens: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states (N, T, hidden_size) -> token logits (N, T, vocab)."""
        return self.blip.text_decoder.cls(hidden)


def run_encoder(backbone: Backbone, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, BlockInputs]:
    """An answer-decoder backbone's encoder blocks, run plainly: (the encoder's last hidden states, its inputs)."""
    hidden, inputs = backbone.embed(image_features, input_ids, attention_mask)
    for block in backbone.blocks[: backbone.decoder_start]:
        hidden = backbone.run_block(block, hidden, inputs)
    return hidden, inputs


def run_decoder(backbone: Backbone, hidden: torch.Tensor, inputs: BlockInputs, answers: AnswerTokens) -> torch.Tensor:
    """The decoder blocks, run plainly on the encoder's output -> token logits (N, T, vocab)."""
    hidden, inputs = backbone.begin_decoding(hidden, inputs, answers)
    for block in backbone.blocks[backbone.decoder_start :]:
        hidden = backbone.run_block(block, hidden, inputs)
    return backbone.pool(hidden, inputs.mask)


def answer_logits(backbone: Backbone, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: AnswerTokens) -> torch.Tensor:
    """Teacher-forced token logits (N, T, vocab) of the answers, every block run as it is."""
    hidden, inputs = run_encoder(backbone, image_features, input_ids, attention_mask)
    return run_decoder(backbone, hidden, inputs, answers)


def greedy_answer(backbone: BLIP, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Greedy decoding through the plain loop (base.greedy_decode) -> (B, 1 + steps) token ids:
    what HF's generate returns with num_beams=1, do_sample=False and max_new_tokens=max_len, for
    unpadded questions (HF's decoder attends to the padding)."""
    with torch.no_grad():
        hidden, inputs = run_encoder(backbone, image_features, input_ids, attention_mask)
    return greedy_decode(lambda answers: run_decoder(backbone, hidden, inputs, answers), hidden.shape[0], backbone, max_len, hidden.device)


def blip_tokenizer():
    """The packaged MiniLM tokenizer (BERT uncased) with BLIP's two tokens added as its
    tokenizer has them: [DEC] (the decoder's start, bos) and [ENC], ids 30522 and 30523."""
    from transformers import AutoTokenizer

    from feddat.backbones.minivl import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


def save_random_blip(folder: str | Path, *, encoder_blocks: int = 2, decoder_blocks: int = 2, hidden: int = 32, image_size: int = 32, seed: int = 0) -> str:
    """Save a randomly initialised BlipForQuestionAnswering of a small shape with BLIP's tokenizer
    built offline (`blip_tokenizer`): `--backbone.name blip --backbone.path FOLDER` then runs
    offline. Nothing it computes means anything, but every code path of a real BLIP runs."""
    from transformers import BlipConfig, BlipForQuestionAnswering

    if encoder_blocks != decoder_blocks:  # one text config sizes both: a saved folder holds one count
        raise ValueError(f"BLIP's text encoder and decoder share one text config: encoder_blocks ({encoder_blocks}) must equal decoder_blocks ({decoder_blocks})")
    tokenizer = blip_tokenizer()
    torch.manual_seed(seed)
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=encoder_blocks,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
    )
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=16)
    # Wider initial weights than HF's (vision 1e-10, text 0.02), so that the answers a random model
    # decodes depend on the image and the question: tests comparing them then compare something.
    text["initializer_range"] = vision["initializer_range"] = 0.1
    BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
