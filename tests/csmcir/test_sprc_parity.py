"""Parity with SPRC's inference (github chunmeifeng/SPRC, `blip2_qformer_cir_align_prompt.py` `inference` /
`extract_target_features`, its modified `Qformer.py`, LAVIS's EVA ViT): an independent plain-torch
re-implementation on a tiny random LAVIS-named state dict, saved as a `.pt`, converted with `csmcir-convert`, and
compared with the converted model under the `sprc` scoring preset.

Nothing here uses transformers' BLIP-2 modules: the reference reads the LAVIS tensors by their LAVIS names.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_csmcir import CSMCIRModel, CSMCIRProcessor
from modeling_csmcir.cli.convert import main as convert_main

VOCAB = 30523  # BERT-uncased + LAVIS's [DEC]
V_WIDTH, V_LAYERS, V_HEADS, PATCH, IMAGE = 32, 2, 2, 8, 32
Q_WIDTH, Q_LAYERS, Q_HEADS, Q_FFN, CROSS_FREQ, NUM_QUERY, EMBED, MAX_POS = 32, 3, 2, 48, 2, 4, 24, 40
BERT_EPS, EVA_EPS, LN_VISION_EPS = 1e-12, 1e-6, 1e-5
HEADS = json.dumps({"num_attention_heads": 2})


def _lavis_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under SPRC's (LAVIS's) parameter names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=g)

    def norm(prefix, width):
        return {f"{prefix}.weight": 1 + rnd(width, scale=0.3), f"{prefix}.bias": rnd(width)}

    def linear(prefix, out_features, in_features):
        return {f"{prefix}.weight": rnd(out_features, in_features), f"{prefix}.bias": rnd(out_features)}

    sd: dict[str, torch.Tensor] = {
        "visual_encoder.cls_token": rnd(1, 1, V_WIDTH),
        "visual_encoder.pos_embed": rnd(1, (IMAGE // PATCH) ** 2 + 1, V_WIDTH),
        "visual_encoder.patch_embed.proj.weight": rnd(V_WIDTH, 3, PATCH, PATCH),
        "visual_encoder.patch_embed.proj.bias": rnd(V_WIDTH),
        **norm("ln_vision", V_WIDTH),
    }
    for i in range(V_LAYERS):
        b = f"visual_encoder.blocks.{i}"
        sd.update(norm(f"{b}.norm1", V_WIDTH), **norm(f"{b}.norm2", V_WIDTH))
        sd[f"{b}.attn.qkv.weight"] = rnd(3 * V_WIDTH, V_WIDTH)
        sd[f"{b}.attn.q_bias"], sd[f"{b}.attn.v_bias"] = rnd(V_WIDTH), rnd(V_WIDTH)
        sd.update(linear(f"{b}.attn.proj", V_WIDTH, V_WIDTH))
        sd.update(linear(f"{b}.mlp.fc1", 4 * V_WIDTH, V_WIDTH), **linear(f"{b}.mlp.fc2", V_WIDTH, 4 * V_WIDTH))
    e = "Qformer.bert.embeddings"
    sd[f"{e}.word_embeddings.weight"] = rnd(VOCAB, Q_WIDTH)
    sd[f"{e}.position_embeddings.weight"] = rnd(MAX_POS, Q_WIDTH)
    sd[f"{e}.position_ids"] = torch.arange(MAX_POS).unsqueeze(0)
    sd.update(norm(f"{e}.LayerNorm", Q_WIDTH))
    for i in range(Q_LAYERS):
        layer = f"Qformer.bert.encoder.layer.{i}"
        kinds = ["attention"] + (["crossattention"] if i % CROSS_FREQ == 0 else [])
        for kind in kinds:
            kv_width = V_WIDTH if kind == "crossattention" else Q_WIDTH
            sd.update(linear(f"{layer}.{kind}.self.query", Q_WIDTH, Q_WIDTH))
            sd.update(linear(f"{layer}.{kind}.self.key", Q_WIDTH, kv_width))
            sd.update(linear(f"{layer}.{kind}.self.value", Q_WIDTH, kv_width))
            sd.update(linear(f"{layer}.{kind}.output.dense", Q_WIDTH, Q_WIDTH))
            sd.update(norm(f"{layer}.{kind}.output.LayerNorm", Q_WIDTH))
        for suffix in ("", "_query"):
            sd.update(linear(f"{layer}.intermediate{suffix}.dense", Q_FFN, Q_WIDTH))
            sd.update(linear(f"{layer}.output{suffix}.dense", Q_WIDTH, Q_FFN))
            sd.update(norm(f"{layer}.output{suffix}.LayerNorm", Q_WIDTH))
    sd["query_tokens"] = rnd(1, NUM_QUERY, Q_WIDTH, scale=1.0)
    sd.update(linear("vision_proj", EMBED, Q_WIDTH), **linear("text_proj", EMBED, Q_WIDTH))
    sd.update(linear("itm_head", 2, Q_WIDTH))
    sd["temp"] = torch.tensor(0.07)
    sd["prompt_tokens"] = rnd(1, NUM_QUERY, Q_WIDTH)  # SPRC's training-only extra
    return sd


class SPRCReference:
    """SPRC's inference in plain torch, read from its public code (LAVIS EVA ViT + modified BERT Q-Former)."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self.sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}

    def _ln(self, x, prefix, eps):
        return F.layer_norm(x, x.shape[-1:], self.sd[f"{prefix}.weight"], self.sd[f"{prefix}.bias"], eps)

    def _lin(self, x, prefix):
        return F.linear(x, self.sd[f"{prefix}.weight"], self.sd[f"{prefix}.bias"])

    # -- LAVIS eva_vit.py: pre-norm blocks, qkv bias (q_bias, 0, v_bias), no final norm; then blip2's ln_vision
    def visual(self, pixel_values):
        sd = self.sd
        x = F.conv2d(pixel_values.double(), sd["visual_encoder.patch_embed.proj.weight"],
                     sd["visual_encoder.patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
        x = torch.cat([sd["visual_encoder.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
        x = x + sd["visual_encoder.pos_embed"]
        for i in range(V_LAYERS):
            b = f"visual_encoder.blocks.{i}"
            h = self._ln(x, f"{b}.norm1", EVA_EPS)
            bias = torch.cat([sd[f"{b}.attn.q_bias"], torch.zeros_like(sd[f"{b}.attn.v_bias"]), sd[f"{b}.attn.v_bias"]])
            qkv = F.linear(h, sd[f"{b}.attn.qkv.weight"], bias)
            B, N, _ = qkv.shape
            q, k, v = qkv.reshape(B, N, 3, V_HEADS, -1).permute(2, 0, 3, 1, 4)
            attn = ((q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = x + self._lin((attn @ v).transpose(1, 2).reshape(B, N, -1), f"{b}.attn.proj")
            h = self._ln(x, f"{b}.norm2", EVA_EPS)
            x = x + self._lin(F.gelu(self._lin(h, f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
        return self._ln(x, "ln_vision", LN_VISION_EPS)

    # -- Qformer.py
    def _attention(self, hidden, prefix, mask, context=None):
        context = hidden if context is None else context
        B, L, _ = hidden.shape

        def heads(t):
            return t.view(B, t.shape[1], Q_HEADS, -1).transpose(1, 2)

        q, k, v = (heads(self._lin(t, f"{prefix}.self.{n}")) for t, n in
                   ((hidden, "query"), (context, "key"), (context, "value")))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + (1.0 - mask[:, None, None, :].double()) * -10000.0  # get_extended_attention_mask
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, -1)
        return self._ln(self._lin(out, f"{prefix}.output.dense") + hidden, f"{prefix}.output.LayerNorm", BERT_EPS)

    def _ffn(self, x, layer, suffix):
        h = F.gelu(self._lin(x, f"{layer}.intermediate{suffix}.dense"))
        return self._ln(self._lin(h, f"{layer}.output{suffix}.dense") + x, f"{layer}.output{suffix}.LayerNorm", BERT_EPS)

    def bert(self, input_ids=None, query_embeds=None, attention_mask=None, encoder_hidden_states=None):
        """`Qformer.bert(...)` of SPRC (no_img=False): BertEmbeddings, then BertLayer's query/text branches."""
        e = "Qformer.bert.embeddings"
        if input_ids is not None:
            positions = torch.arange(input_ids.shape[1])
            x = self.sd[f"{e}.word_embeddings.weight"][input_ids] + self.sd[f"{e}.position_embeddings.weight"][positions]
            if query_embeds is not None:
                x = torch.cat([query_embeds.double(), x], dim=1)
        else:
            x = query_embeds.double()
        x = self._ln(x, f"{e}.LayerNorm", BERT_EPS)  # over the whole [query_embeds; text] concatenation
        query_length = query_embeds.shape[1] if query_embeds is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2])
        for i in range(Q_LAYERS):
            layer = f"Qformer.bert.encoder.layer.{i}"
            a = self._attention(x, f"{layer}.attention", attention_mask)  # self-attention over all tokens
            if encoder_hidden_states is not None:
                qa = a[:, :query_length]
                if i % CROSS_FREQ == 0:
                    qa = self._attention(qa, f"{layer}.crossattention", None, encoder_hidden_states.double())
                out = self._ffn(qa, layer, "_query")
                if a.shape[1] > query_length:
                    out = torch.cat([out, self._ffn(a[:, query_length:], layer, "")], dim=1)
            else:  # no image: every token takes the text branch
                out = self._ffn(a, layer, "")
            x = out
        return x

    def query_features(self, pixel_values, input_ids, attention_mask):
        """`inference`: fusion pass, image-free text pass over the fused query tokens, text_proj of text [CLS]."""
        image = self.visual(pixel_values)
        query_tokens = self.sd["query_tokens"].expand(image.shape[0], -1, -1)
        mask = torch.cat([torch.ones(image.shape[0], NUM_QUERY, dtype=torch.long), attention_mask], dim=1)
        fusion = self.bert(input_ids, query_tokens, mask, image)
        text = self.bert(input_ids, fusion[:, :NUM_QUERY], mask)
        return F.normalize(self._lin(text[:, NUM_QUERY], "text_proj"), dim=-1)

    def target_features(self, pixel_values):
        """`extract_target_features`: vision_proj of the image-only query-token outputs, normalised per token."""
        image = self.visual(pixel_values)
        out = self.bert(query_embeds=self.sd["query_tokens"].expand(image.shape[0], -1, -1),
                        encoder_hidden_states=image)
        return F.normalize(self._lin(out, "vision_proj"), dim=-1)

    @staticmethod
    def scores(query_features, target_features):
        """`inference`'s sim_t2q.max(-1)."""
        return torch.einsum("qd,tkd->qtk", query_features, target_features).amax(-1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sprc")
    sd = _lavis_state_dict()
    torch.save({"Blip2QformerCirAlignPrompt": sd, "epoch": 1}, tmp / "sprc.pt")
    convert_main(["--checkpoint", str(tmp / "sprc.pt"), "--output_dir", str(tmp / "out"), "--preset", "sprc",
                  "--vision_config", HEADS, "--qformer_config", HEADS])
    return sd, tmp / "out"


def _images(count, seed):
    rng = np.random.default_rng(seed)
    sizes = [(40, 90), (70, 30), (33, 35), (50, 64), (20, 61), (45, 45)]
    return [Image.fromarray(rng.integers(0, 255, (*sizes[i % 6], 3), dtype=np.uint8)) for i in range(count)]


def test_converted_sprc_checkpoint_matches_the_reference_implementation(converted):
    sd, folder = converted
    model = CSMCIRModel.from_pretrained(folder).eval()
    processor = CSMCIRProcessor.from_pretrained(folder)
    assert (model.config.query_mode, model.config.target_representation) == ("sprc", "tokens")
    assert (processor.image_preprocessing, processor.caption_normalization) == ("targetpad", "blip")
    report = json.loads((folder / "conversion_report.json").read_text())
    assert report["scoring"]["preset"] == "sprc" and "prompt_tokens" in report["extras"]
    from safetensors.torch import load_file

    assert torch.equal(load_file(folder / "method_extras.safetensors")["prompt_tokens"], sd["prompt_tokens"])

    reference = SPRCReference(sd)
    texts = ["Is Shorter and has NO sleeves.", "make the dog (on the left) a cat!", "remove: the people"]
    queries = processor(images=_images(3, 0), text=texts)
    gallery = processor(images=_images(6, 1))
    with torch.no_grad():
        q = model.get_query_features(**queries).double()
        t = model.get_target_features(pixel_values=gallery["pixel_values"]).double()
    q_ref = reference.query_features(queries["pixel_values"], queries["input_ids"], queries["attention_mask"])
    t_ref = reference.target_features(gallery["pixel_values"])
    assert t.shape == t_ref.shape == (6, NUM_QUERY, EMBED)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(t, t_ref, atol=1e-5, rtol=0)
    scores, scores_ref = CSMCIRModel.score(q, t), SPRCReference.scores(q_ref, t_ref)
    torch.testing.assert_close(scores, scores_ref, atol=1e-5, rtol=0)
    assert torch.equal(scores.argsort(dim=1, descending=True), scores_ref.argsort(dim=1, descending=True))
    assert float(scores_ref.max() - scores_ref.min()) > 1e-2  # the ranking is not decided by noise
    # the joint (one-pass) query differs: the second pass matters
    model.config.query_mode = "joint"
    with torch.no_grad():
        assert (model.get_query_features(**queries).double() - q_ref).abs().max() > 1e-3


def test_the_preset_is_detected_from_prompt_tokens(converted, tmp_path):
    sd, _ = converted
    torch.save({"model": sd}, tmp_path / "sprc.pt")
    report = convert_main(["--checkpoint", str(tmp_path / "sprc.pt"), "--output_dir", str(tmp_path / "out"),
                           "--vision_config", HEADS, "--qformer_config", HEADS])
    assert report.scoring["preset"] == "sprc" and report.scoring["selected_by"].startswith("detected")
    authors = {k: v for k, v in sd.items() if k != "prompt_tokens"}
    authors["token_importance"] = torch.rand(NUM_QUERY)
    torch.save({"model": authors}, tmp_path / "authors.pt")
    report = convert_main(["--checkpoint", str(tmp_path / "authors.pt"), "--output_dir", str(tmp_path / "a"),
                           "--vision_config", HEADS, "--qformer_config", HEADS])
    assert report.scoring["preset"] == "csmcir-authors"
    assert "not used for scoring" in report.extras["token_importance"]
    saved = json.loads((tmp_path / "a" / "conversion_report.json").read_text())
    assert saved["scoring"]["target_representation"] == "tokens" and "token_importance" in saved["unmapped"]
    assert CSMCIRProcessor.from_pretrained(tmp_path / "a").image_preprocessing == "targetpad"
    plain = {k: v for k, v in sd.items() if k != "prompt_tokens"}
    torch.save({"model": plain}, tmp_path / "plain.pt")
    report = convert_main(["--checkpoint", str(tmp_path / "plain.pt"), "--output_dir", str(tmp_path / "p"),
                           "--vision_config", HEADS, "--qformer_config", HEADS, "--preset", "csmcir-authors"])
    assert report.scoring == {**report.scoring, "preset": "csmcir-authors", "selected_by": "named (--preset)"}
    assert not (tmp_path / "p" / "method_extras.safetensors").exists()
