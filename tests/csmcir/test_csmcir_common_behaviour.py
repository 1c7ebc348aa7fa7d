"""CSMCIRModel behaves as transformers models do: per-part hidden states and attentions, tuple outputs, a vocabulary
that resizes through the Q-Former's config and survives save/load, `torch.export` / `torch.compile` tracing,
`from_pretrained` initialising like `__init__`, and vision backbones refused at config time when they cannot work."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, PreTrainedModel, Siglip2VisionConfig

from modeling_csmcir import CSMCIRConfig, CSMCIRModel
from modeling_csmcir.presets import preset_config, preset_vision_config
from tests.hub_isolation import run_isolated

VOCAB = 100
BATCH, TEXT_LEN, CAPTION_LEN = 2, 6, 5


def _tiny_config(**overrides) -> CSMCIRConfig:
    return preset_config("tiny", vocab_size=VOCAB, **overrides)


def _eager_model(**overrides) -> CSMCIRModel:
    torch.manual_seed(0)
    return CSMCIRModel._from_config(_tiny_config(**overrides), attn_implementation="eager").eval()


def _inputs(captioned_targets: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, VOCAB, (BATCH, TEXT_LEN), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    inputs = dict(
        pixel_values=torch.randn(BATCH, 3, 32, 32, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
        target_pixel_values=torch.randn(BATCH, 3, 32, 32, generator=generator),
        target_ids=torch.tensor([3, 3]),
    )
    if captioned_targets:
        inputs["target_input_ids"] = torch.randint(5, VOCAB, (BATCH, CAPTION_LEN), generator=generator)
        inputs["target_attention_mask"] = torch.ones(BATCH, CAPTION_LEN, dtype=torch.long)
    return inputs


def _assert_same_structure(left, right) -> None:
    """Tuples of tensors (nested) are equal element for element."""
    assert type(left) is type(right) or (isinstance(left, tuple) and isinstance(right, tuple))
    if isinstance(left, torch.Tensor):
        assert torch.equal(left, right)
        return
    assert len(left) == len(right)
    for a, b in zip(left, right):
        _assert_same_structure(a, b)


# ------------------------------------------------------------------------------------------- hidden states, tuples


@pytest.mark.parametrize("captioned_targets", [True, False], ids=["captioned-targets", "image-only-targets"])
def test_every_part_returns_its_hidden_states_and_attentions_when_asked(captioned_targets):
    model = _eager_model()
    config = model.config
    vision, qformer = config.vision_config, config.qformer_config
    num_patches = (vision.image_size // vision.patch_size) ** 2 + 1  # + [CLS]
    num_query, heads = config.num_query_tokens, qformer.num_attention_heads
    with torch.no_grad():
        output = model(**_inputs(captioned_targets), output_attentions=True, output_hidden_states=True)

    for side in ("query", "target"):
        seen = output[f"{side}_vision_model_output"]
        assert len(seen.hidden_states) == vision.num_hidden_layers + 1  # embeddings + every layer
        assert all(h.shape == (BATCH, num_patches, vision.hidden_size) for h in seen.hidden_states)
        assert len(seen.attentions) == vision.num_hidden_layers
        assert all(a.shape == (BATCH, vision.num_attention_heads, num_patches, num_patches) for a in seen.attentions)
        torch.testing.assert_close(seen.last_hidden_state, model.get_image_embeds(
            _inputs()["pixel_values" if side == "query" else "target_pixel_values"]))

    text_len = {"query": TEXT_LEN, "target": CAPTION_LEN if captioned_targets else 0}
    for side in ("query", "target"):
        q = output[f"{side}_qformer_model_output"]
        length = num_query + text_len[side]
        assert q.last_hidden_state.shape == (BATCH, length, qformer.hidden_size)
        assert len(q.hidden_states) == qformer.num_hidden_layers + 1
        assert all(h.shape == (BATCH, length, qformer.hidden_size) for h in q.hidden_states)
        # tiny preset: every layer cross-attends; only the query tokens attend to the image
        assert len(q.cross_attentions) == qformer.num_hidden_layers
        assert all(a.shape == (BATCH, heads, num_query, num_patches) for a in q.cross_attentions)
        # transformers' BLIP-2 Q-Former records its cross-attention maps among `attentions` too: one self-attention
        # map over the whole sequence per layer
        self_maps = [a for a in q.attentions if a.shape[-1] == length]
        assert len(self_maps) == qformer.num_hidden_layers
        assert all(a.shape == (BATCH, heads, length, length) for a in self_maps)
        assert torch.allclose(self_maps[0].sum(-1), torch.ones(BATCH, heads, length), atol=1e-5)  # softmax rows


def test_without_the_flags_the_part_outputs_carry_no_hidden_states_or_attentions():
    with torch.no_grad():
        output = _eager_model()(**_inputs())
    for name in ("query_vision_model_output", "query_qformer_model_output", "target_vision_model_output",
                 "target_qformer_model_output"):
        assert output[name].hidden_states is None and output[name].attentions is None
        assert output[name].last_hidden_state is not None


def test_output_flags_default_to_the_config():
    model = _eager_model()
    model.config.output_hidden_states = True
    with torch.no_grad():
        output = model(**_inputs())
    assert len(output.query_qformer_model_output.hidden_states) == model.config.qformer_config.num_hidden_layers + 1
    assert output.query_vision_model_output.attentions is None


def test_cached_image_embeds_give_no_vision_output_but_the_same_scores():
    model = _eager_model()
    inputs = _inputs()
    with torch.no_grad():
        from_pixels = model(**inputs)
        cached = dict(inputs, image_embeds=model.get_image_embeds(inputs.pop("pixel_values")),
                      target_image_embeds=model.get_image_embeds(inputs.pop("target_pixel_values")))
        from_cache = model(**{k: v for k, v in cached.items() if "pixel_values" not in k})
    assert from_cache.query_vision_model_output is None and from_cache.target_vision_model_output is None
    assert torch.equal(from_cache.logits_per_query, from_pixels.logits_per_query)


@pytest.mark.parametrize("flags", [{}, {"output_attentions": True, "output_hidden_states": True}],
                         ids=["plain", "with-hidden-states-and-attentions"])
def test_return_dict_false_gives_the_dict_output_as_nested_tuples(flags):
    model = _eager_model()
    with torch.no_grad():
        as_dict = model(**_inputs(), **flags)
        as_tuple = model(**_inputs(), **flags, return_dict=False)
    assert isinstance(as_tuple, tuple)
    loss, logits, query, target, *parts = as_tuple
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits_per_query)
    assert torch.equal(query, as_dict.query_embeds) and torch.equal(target, as_dict.target_embeds)
    assert len(parts) == 4 and all(isinstance(part, tuple) for part in parts)
    _assert_same_structure(as_tuple, as_dict.to_tuple())
    # the nested tuples are the part outputs' own tuples
    _assert_same_structure(parts[1], as_dict.query_qformer_model_output.to_tuple())


def test_return_dict_defaults_to_the_config_and_loss_is_left_out_of_the_tuple_when_not_computed():
    model = _eager_model()
    model.config.return_dict = False
    with torch.no_grad():
        output = model(**_inputs(), return_loss=False)
        forced = model(**_inputs(), return_loss=False, return_dict=True)
    assert isinstance(output, tuple)
    assert torch.equal(output[0], forced.logits_per_query)  # no loss: logits come first


# ------------------------------------------------------------------------------------------------- vocabulary


def test_get_text_config_is_the_qformer_config():
    config = _tiny_config()
    assert config.get_text_config() is config.qformer_config
    assert config.get_text_config(decoder=True) is config.qformer_config
    assert config.get_text_config().vocab_size == VOCAB


@pytest.mark.parametrize("share_qformer", [True, False], ids=["shared", "unshared-ablation"])
def test_resize_token_embeddings_updates_the_qformer_vocabulary_and_round_trips(share_qformer, tmp_path):
    model = _eager_model(share_qformer=share_qformer)
    model.resize_token_embeddings(VOCAB + 7)
    assert model.config.qformer_config.vocab_size == VOCAB + 7
    assert "vocab_size" not in model.config.to_diff_dict()  # no stray top-level copy
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 7
    if not share_qformer:
        assert model.target_tower.embeddings.word_embeddings.weight.shape[0] == VOCAB + 7
    inputs = _inputs()
    inputs["input_ids"][0, 1] = VOCAB + 6  # one of the new tokens
    inputs["target_input_ids"][1, 2] = VOCAB + 5
    with torch.no_grad():
        before = model(**inputs)
    model.save_pretrained(tmp_path)
    reloaded = CSMCIRModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.qformer_config.vocab_size == VOCAB + 7
    with torch.no_grad():
        after = reloaded(**inputs)
    assert torch.equal(after.logits_per_query, before.logits_per_query)


def test_shrinking_the_vocabulary_keeps_the_remaining_rows():
    model = _eager_model()
    kept = model.get_input_embeddings().weight[: VOCAB - 10].clone()
    model.resize_token_embeddings(VOCAB - 10)
    assert torch.equal(model.get_input_embeddings().weight, kept)
    assert model.config.get_text_config().vocab_size == VOCAB - 10


# ---------------------------------------------------------------------------------------- export and compile


def test_torch_export_of_forward_gives_the_eager_outputs():
    model = _eager_model()
    inputs = _inputs()
    with torch.no_grad():
        eager = model(**inputs)
        exported = torch.export.export(model, args=(), kwargs=inputs)
        traced = exported.module()(**inputs)
    for name in ("loss", "logits_per_query", "query_embeds", "target_embeds"):
        torch.testing.assert_close(traced[name], eager[name], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(traced["target_qformer_model_output"].last_hidden_state,
                               eager.target_qformer_model_output.last_hidden_state, atol=1e-6, rtol=1e-6)


def test_compiled_query_and_target_encoders_have_no_graph_break():
    # fullgraph=True raises at the first graph break; the eager backend checks the tracing without code generation
    model = _eager_model()
    inputs = _inputs()
    query = dict(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                 attention_mask=inputs["attention_mask"])
    target = dict(pixel_values=inputs["target_pixel_values"], input_ids=inputs["target_input_ids"],
                  attention_mask=inputs["target_attention_mask"])
    torch._dynamo.reset()
    with torch.no_grad():
        compiled_query = torch.compile(model.get_query_features, fullgraph=True, backend="eager")(**query)
        compiled_target = torch.compile(model.get_target_features, fullgraph=True, backend="eager")
        captioned, image_only = compiled_target(**target), compiled_target(target["pixel_values"])
        torch.testing.assert_close(compiled_query, model.get_query_features(**query), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(captioned, model.get_target_features(**target), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(image_only, model.get_target_features(target["pixel_values"]), atol=1e-6, rtol=1e-6)


def test_the_empty_text_check_still_runs_outside_tracing():
    model = _eager_model()
    inputs = _inputs()
    inputs["attention_mask"][1] = 0
    with pytest.raises(ValueError, match=r"masks every token of rows \[1\]"):
        model(**inputs)


# ---------------------------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("family", ["blip2", "clip", "siglip", "dinov2"])
def test_from_pretrained_without_weights_initialises_like_init(family, monkeypatch):
    """Every module initialised from the same seed: `__init__` and `from_pretrained` with no saved weights must
    then give the same tensors, the vision tower's included (each sub-model by its own rules)."""
    original = PreTrainedModel._initialize_weights

    def seeded(self, module, *args, **kwargs):
        torch.manual_seed(0)
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    config = _tiny_config(vision_config=preset_vision_config(family))
    built = CSMCIRModel(config).state_dict()
    loaded = CSMCIRModel.from_pretrained(None, config=config, state_dict={}).state_dict()
    assert built.keys() == loaded.keys()
    differing = [name for name in built if not torch.equal(built[name], loaded[name])]
    assert differing == []


# ------------------------------------------------------------------------------------------ vision backbones


def test_siglip2_vision_config_is_refused_at_config_time():
    siglip2 = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"Siglip2VisionConfig .*not supported: .*pixel_attention_mask.*spatial_shapes"):
        _tiny_config(vision_config=siglip2)
    with pytest.raises(ValueError, match="not supported"):
        CSMCIRConfig(vision_config={"model_type": "siglip2_vision_model", "hidden_size": 32})


def test_a_whole_multimodal_config_as_vision_config_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"whole CLIPConfig .*pass its `\.vision_config`"):
        _tiny_config(vision_config=CLIPConfig())


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
def test_other_vision_backbones_run_forward_with_every_output(family):
    model = _eager_model(vision_config=preset_vision_config(family))
    with torch.no_grad():
        output = model(**_inputs(), output_hidden_states=True, output_attentions=True)
    vision = model.config.vision_config
    assert len(output.query_vision_model_output.hidden_states) == vision.num_hidden_layers + 1
    assert len(output.target_vision_model_output.attentions) == vision.num_hidden_layers
    assert output.logits_per_query.shape == (BATCH, BATCH) and torch.isfinite(output.loss)


# ------------------------------------------------------------------------------------------------ the Hub path


def test_a_resized_clip_backbone_model_behaves_alike_through_remote_code(tmp_path):
    """Saved and loaded where the package cannot be imported: the resized vocabulary, tuple outputs and the
    per-part hidden states come back the same."""
    model = _eager_model(vision_config=preset_vision_config("clip"))
    model.resize_token_embeddings(VOCAB + 3)
    model.save_pretrained(tmp_path / "repo")
    inputs = _inputs()
    inputs["input_ids"][0, 0] = VOCAB + 2
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True)
    result = run_isolated(
        """
        import json, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained("repo", trust_remote_code=True, attn_implementation="eager").eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load("inputs.pt", weights_only=True)
        with torch.no_grad():
            as_tuple = model(**inputs, output_hidden_states=True, return_dict=False)
        print(json.dumps({"vocab": model.config.qformer_config.vocab_size, "text_vocab": model.config.get_text_config().vocab_size,
                          "vision": type(model.vision_model).__name__, "logits": as_tuple[1].tolist(),
                          "query_qformer_hidden_states": len(as_tuple[5][2]),
                          "last_vision_hidden_state": as_tuple[4][2][-1].tolist()}))
        """,
        cwd=tmp_path,
    )
    assert result["vocab"] == result["text_vocab"] == VOCAB + 3
    assert result["vision"] == "CLIPVisionModel"
    torch.testing.assert_close(torch.tensor(result["logits"]), expected.logits_per_query, atol=1e-5, rtol=1e-5)
    assert result["query_qformer_hidden_states"] == len(expected.query_qformer_model_output.hidden_states)
    torch.testing.assert_close(torch.tensor(result["last_vision_hidden_state"]),
                               expected.query_vision_model_output.hidden_states[-1], atol=1e-5, rtol=1e-5)
