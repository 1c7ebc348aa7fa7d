"""Tiny random vision-language models built offline, for tests of the MCoT captioner.

``build_tiny_llava`` assembles a ``LlavaForConditionalGeneration`` from a 2-layer CLIP vision tower and a
2-layer Llama, with a word-level tokenizer built locally (``tokenizers``) and a Jinja chat template, and saves
it with a ``LlavaProcessor`` so that ``pipeline("image-text-to-text", model=folder)`` loads it with no network.
``build_tiny_text_lm`` saves a text-only Llama with a tokenizer and chat template (a model that cannot take
images).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)


IMAGE_SIZE = 16
PATCH_SIZE = 8

# Words a random model can emit; includes JSON punctuation and the level keys so random answers look
# somewhat like the real thing without being parseable by construction.
_WORDS = (
    "a the red blue green dress shirt cat dog car sky white black striped cotton silk long short sleeve "
    "logo text round square small large person street room shoes bag { } : , \" level_1_global level_2_objects "
    "level_3_attributes Final_Caption user assistant system with on in of and"
).split()
_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : "
    "{% if message['content'] is string %}{{ message['content'] }} "
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}{{ c['text'] }} {% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose special tokens (``<image>`` included) are real special tokens."""
    vocab = {tok: i for i, tok in enumerate(_SPECIAL + _WORDS)}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    # Registered on the backend as special so the pre-tokenizer never splits "<image>" (the image-token count
    # check in the processor fails otherwise).
    backend.add_special_tokens(_SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _tiny_llama_config(tokenizer: PreTrainedTokenizerFast, num_hidden_layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_llava(save_dir: str | Path, *, chat_template: bool = True, seed: int = 0) -> Path:
    """Save a tiny random Llava (model + processor) to ``save_dir`` and return the folder."""
    save_dir = Path(save_dir)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    vision_config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=16,
    )
    text_config = _tiny_llama_config(tokenizer, num_hidden_layers=2)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    template = CHAT_TEMPLATE if chat_template else None
    if template is not None:
        tokenizer.chat_template = template
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    return save_dir


def build_tiny_text_lm(save_dir: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random text-only Llama with a chat template (a model with no image support)."""
    save_dir = Path(save_dir)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = _tiny_llama_config(tokenizer, num_hidden_layers=1)
    LlamaForCausalLM(config).save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return save_dir
