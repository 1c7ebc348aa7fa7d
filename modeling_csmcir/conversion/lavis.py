"""Convert LAVIS-format BLIP-2 / SPRC / CSMCIR checkpoints into a `CSMCIRModel`.

The CSMCIR and SPRC authors trained in forks of Salesforce's LAVIS and published their weights as
`torch.save({"epoch": n, "<ModelClass>": state_dict})`; LAVIS itself ships `{"model": state_dict, ...}`. Their
parameter names are LAVIS's: `visual_encoder.*` (EVA ViT-g), `ln_vision.*`, `Qformer.bert.*` (a BERT with
cross-attention and a second, query-only feed-forward branch), `query_tokens`, `vision_proj.*`, `text_proj.*`,
`itm_head.*`, `temp`, plus method extras such as SPRC's `prompt_tokens`.

`CSMCIRModel` is built from transformers' own BLIP-2 modules, so the rename table here is the one of transformers'
BLIP-2 conversion script (`models/blip_2/convert_blip_2_original_to_pytorch.py`: `visual_encoder.blocks.N.*` →
`vision_model.encoder.layers.N.*`, `ln_vision` → `vision_model.post_layernorm`, `Qformer.bert.embeddings.LayerNorm`
→ `qformer.layernorm`, `Qformer.bert` → `qformer`, `attention.self` → `attention.attention`) adapted to the names
of `Blip2ForImageTextRetrieval` (text embeddings at the top level, `vision_projection`, `text_projection`). One
tensor is not a rename: EVA's attention keeps `q_bias` and `v_bias` and no key bias, while transformers' BLIP-2
attention has one `qkv.bias`, so the two are concatenated as `(q_bias, 0, v_bias)` — exactly the bias EVA
builds on the fly in its forward pass.

Everything the table does not map is reported with a reason, every model weight the checkpoint does not fill is
reported, and `convert_lavis_checkpoint` refuses to return a model with unfilled weights unless told to.

The computation is chosen with the weights: a scoring preset (`presets.SCORING_PRESETS`) sets the model's
`query_mode` / `target_representation` and the processor's preprocessing. Unless one is named, it is detected from
the method extras: SPRC's `prompt_tokens` → `sprc`, the CSMCIR authors' `token_importance` → `csmcir-authors`,
neither → `ours`. Both extras are kept, unchanged, in `method_extras.safetensors` beside the model and listed in
the report with what is done with them (`METHOD_EXTRAS`); neither enters the scoring.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig
from transformers.utils import logging

from hub_cards.atomic_files import atomic_directory, write_json_atomically
from hub_cards.portable_paths import portable_path

from ..configuration_csmcir import CSMCIRConfig
from ..modeling_csmcir import CSMCIRModel
from ..presets import SCORING_PRESETS, get_scoring_preset
from .processor import build_processor

logger = logging.get_logger(__name__)

# LAVIS name (regular expression, full match) → CSMCIR name. Order does not matter: patterns are disjoint.
LAVIS_TO_CSMCIR_RENAMES: tuple[tuple[str, str], ...] = (
    # EVA ViT-g → Blip2VisionModel
    (r"visual_encoder\.cls_token", r"vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", r"vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    # LAVIS Q-Former (BERT with cross-attention) → Blip2TextEmbeddings + Blip2QFormerModel
    (r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight", r"embeddings.\1.weight"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.attention.\3.\4",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.output.\3.\4",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate|intermediate_query)\.dense\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.dense.\3",
    ),
    (
        r"Qformer\.bert\.encoder\.layer\.(\d+)\.(output|output_query)\.(dense|LayerNorm)\.(weight|bias)",
        r"qformer.encoder.layer.\1.\2.\3.\4",
    ),
    # heads and scalars
    (r"query_tokens", r"query_tokens"),
    (r"vision_proj\.(weight|bias)", r"vision_projection.\1"),
    (r"text_proj\.(weight|bias)", r"text_projection.\1"),
    (r"temp", r"temperature"),
)

# EVA keeps separate query and value biases (no key bias); transformers has one qkv.bias. Handled by hand.
_EVA_QV_BIAS = re.compile(r"visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)")

# Keys that are known and deliberately not converted, with the reason shown in the report.
KNOWN_UNMAPPED: tuple[tuple[str, str], ...] = (
    (r"Qformer\.bert\.embeddings\.position_ids", "buffer (position indices), rebuilt by the model"),
    (r"Qformer\.cls\..*", "Q-Former language-modelling head (BLIP-2 image-grounded generation), not used by CSMCIR"),
    (r"itm_head\..*", "image-text matching head, not used by CSMCIR retrieval"),
    (r"prompt_tokens", "SPRC method extra (prompt tokens of its relative-contrastive training loss)"),
    (r"token_importance", "CSMCIR authors' method extra (a per-token importance tensor)"),
)

#: Method extras: kept unchanged in ``method_extras.safetensors`` and reported with what is done with them.
METHOD_EXTRAS: dict[str, str] = {
    "prompt_tokens": (
        "kept in method_extras.safetensors, not used for scoring: SPRC's public code uses its prompt tokens only in "
        "training (the text-only pass and the alignment loss of blip2_qformer_cir_align_prompt.forward); its "
        "inference and extract_target_features do not read them"
    ),
    "token_importance": (
        "kept in method_extras.safetensors, not used for scoring: how the CSMCIR authors' released inference "
        "weights target tokens with it is not in the code we could read, so the token-level scores here are the "
        "unweighted maximum over tokens (our reading)"
    ),
}
#: Which extra selects which scoring preset when none is named.
_DETECTING_EXTRAS = (("prompt_tokens", "sprc"), ("token_importance", "csmcir-authors"))
METHOD_EXTRAS_NAME = "method_extras.safetensors"


def detect_scoring_preset(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``(scoring preset, why)`` for a LAVIS state dict: ``sprc`` with SPRC's ``prompt_tokens``, ``csmcir-authors``
    with the authors' ``token_importance``, ``ours`` otherwise (a plain BLIP-2 checkpoint)."""
    for key, name in _DETECTING_EXTRAS:
        if key in state_dict:
            return name, f"detected: the checkpoint has {key!r}"
    return "ours", "detected: no method extra (prompt_tokens / token_importance) in the checkpoint"

_COMPILED_RENAMES = tuple((re.compile(source), target) for source, target in LAVIS_TO_CSMCIR_RENAMES)
_COMPILED_UNMAPPED = tuple((re.compile(source), reason) for source, reason in KNOWN_UNMAPPED)
_METADATA_KEYS = ("epoch", "step", "global_step", "config", "optimizer", "optimizer_state_dict", "scheduler",
                  "scaler", "lr_scheduler", "args", "best", "iters")


def lavis_key_to_csmcir(key: str) -> str | None:
    """The CSMCIR name of one LAVIS parameter, or None when the table does not map it (EVA's q/v biases included)."""
    for pattern, target in _COMPILED_RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(target, key)
    return None


def _unmapped_reason(key: str) -> str:
    for pattern, reason in _COMPILED_UNMAPPED:
        if pattern.fullmatch(key):
            return reason
    return "unknown key (no rule in the LAVIS → CSMCIR table)"


@dataclass
class LavisConversionReport:
    """What a conversion did.

    Attributes:
        filled: CSMCIR weights written from the checkpoint.
        unmapped: checkpoint key → why it was not converted (known extras and unknown keys alike).
        unfilled: CSMCIR weights the checkpoint had nothing for (they keep their fresh initialisation).
        scoring: the scoring preset applied (``preset``), how it was chosen (``selected_by``) and its settings.
        extras: method extra (``prompt_tokens``, ``token_importance``) → what is done with it.
        extra_tensors: those extras' tensors (saved as ``method_extras.safetensors``; not in ``to_dict``).
    """

    filled: list[str] = field(default_factory=list)
    unmapped: dict[str, str] = field(default_factory=dict)
    unfilled: list[str] = field(default_factory=list)
    scoring: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        lines = [f"{len(self.filled)} CSMCIR weights filled from the checkpoint."]
        if self.scoring:
            settings = ", ".join(f"{k}={v}" for k, v in self.scoring.items() if k not in ("preset", "selected_by"))
            lines.append(f"scoring preset {self.scoring['preset']!r} ({self.scoring['selected_by']}): {settings}")
        for key, action in sorted(self.extras.items()):
            lines.append(f"method extra {key}: {action}")
        if self.unmapped:
            lines.append(f"{len(self.unmapped)} checkpoint keys not converted:")
            lines += [f"  {key}: {reason}" for key, reason in sorted(self.unmapped.items())]
        if self.unfilled:
            lines.append(f"{len(self.unfilled)} CSMCIR weights NOT filled (fresh initialisation):")
            lines += [f"  {key}" for key in self.unfilled]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"filled": list(self.filled), "unmapped": dict(self.unmapped), "unfilled": list(self.unfilled),
                "scoring": dict(self.scoring), "extras": dict(self.extras)}


# ---------------------------------------------------------------------------------------------- reading


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value.values())


def extract_state_dict(checkpoint: Any, state_dict_key: str | None = None, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model's state dict inside a loaded checkpoint.

    Accepts a bare state dict, LAVIS's `{"model": state_dict, ...}`, `{"state_dict": ...}` and the SPRC / CSMCIR
    training scripts' `{"<ModelClass>": state_dict, "epoch": n}`. With several candidate state dicts, pass
    `state_dict_key`.
    """
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict (a state dict or a checkpoint holding one), got {type(checkpoint).__name__}")
    if state_dict_key is not None:
        if state_dict_key not in checkpoint or not _is_state_dict(checkpoint[state_dict_key]):
            raise ValueError(
                f"{source}: state_dict_key={state_dict_key!r} does not name a state dict; keys are {sorted(checkpoint)}"
            )
        return dict(checkpoint[state_dict_key])
    candidates = {k: v for k, v in checkpoint.items() if k not in _METADATA_KEYS and _is_state_dict(v)}
    for preferred in ("model", "state_dict"):
        if preferred in candidates:
            return dict(candidates[preferred])
    if len(candidates) == 1:
        return dict(next(iter(candidates.values())))
    if not candidates:
        raise ValueError(
            f"{source}: no state dict found; expected tensors at the top level, under 'model' / 'state_dict', or "
            f"under one model-class key next to 'epoch'. Top-level keys: {sorted(map(str, checkpoint))[:20]}"
        )
    raise ValueError(f"{source}: several state dicts {sorted(candidates)}; choose one with state_dict_key")


def load_lavis_checkpoint(path: str | os.PathLike, state_dict_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a LAVIS / SPRC / CSMCIR `.pt`/`.pth` checkpoint with `torch.load(..., weights_only=True)` and return its state dict.

    `weights_only=True` refuses pickled code: a checkpoint that needs it is not a plain weights file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"checkpoint {path!r} is empty (0 bytes); expected a LAVIS .pt/.pth or .safetensors file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except Exception as error:  # safetensors raises its own SafetensorError (not an OSError) for a broken file
            raise ValueError(
                f"checkpoint {path!r} ({size} bytes) is not a readable safetensors file, e.g. truncated "
                f"({type(error).__name__}: {error})"
            ) from None
        return extract_state_dict(tensors, state_dict_key, source=path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if any(sign in str(error) for sign in ("Unsupported operand", "invalid load key")):
            raise ValueError(
                f"checkpoint {path!r} ({size} bytes) cannot be read by torch.load: not a checkpoint file (e.g. a text "
                "or HTML page saved under that name)"
            ) from None
        raise ValueError(
            f"checkpoint {path!r} holds pickled objects that weights_only=True refuses to load ({error}). If you trust "
            "the file, load it yourself with torch.load(..., weights_only=False) and pass the state dict to "
            "convert_lavis_checkpoint."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"checkpoint {path!r} ({size} bytes) cannot be read by torch.load, e.g. a truncated or partial download "
            f"({type(error).__name__}: {' '.join(str(error).split())[:300]})"
        ) from None
    return extract_state_dict(checkpoint, state_dict_key, source=path)


# ------------------------------------------------------------------------------------ config inference

# EVA ViT-g is 1408 wide with 16 heads of 88; other widths follow the 64-per-head convention.
_KNOWN_VISION_HEADS = {1408: 16, 1024: 16, 768: 12}


def _layer_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    compiled = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state_dict if (m := compiled.match(key))})


def _require(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(
            f"checkpoint has no {key!r}, needed to infer {what}; pass the value explicitly "
            "(vision_config / qformer_config / config overrides)"
        )
    return state_dict[key]


def _guess_heads(width: int, known: dict[int, int], what: str) -> int:
    if width in known:
        return known[width]
    if width % 64 == 0:
        logger.warning("%s: guessing num_attention_heads=%d (64 per head) for width %d", what, width // 64, width)
        return width // 64
    raise ValueError(
        f"{what}: cannot guess num_attention_heads for width {width} (not a multiple of 64); pass it explicitly, "
        f'e.g. {{"num_attention_heads": N}}'
    )


def infer_vision_config(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> Blip2VisionConfig:
    """A `Blip2VisionConfig` sized from an EVA ViT (`visual_encoder.*`) state dict; `overrides` win."""
    layers = _layer_indices(state_dict, r"visual_encoder\.blocks\.(\d+)\.")
    if not layers:
        keys = sorted(k for k in state_dict if k.startswith("visual_encoder."))[:3]
        raise ValueError(
            "checkpoint has no EVA ViT blocks (`visual_encoder.blocks.N.*`); only the EVA ViT-g layout of BLIP-2 is "
            f"supported (first visual_encoder keys: {keys or 'none'})"
        )
    hidden = _require(state_dict, "visual_encoder.cls_token", "the vision width").shape[-1]
    patch = _require(state_dict, "visual_encoder.patch_embed.proj.weight", "the patch size").shape[-1]
    positions = _require(state_dict, "visual_encoder.pos_embed", "the image size").shape[1]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"visual_encoder.pos_embed has {positions} positions: not 1 + a square grid of patches")
    values: dict[str, Any] = dict(
        hidden_size=hidden,
        intermediate_size=_require(state_dict, "visual_encoder.blocks.0.mlp.fc1.weight", "the MLP width").shape[0],
        num_hidden_layers=layers[-1] + 1,
        image_size=grid * patch,
        patch_size=patch,
        qkv_bias="visual_encoder.blocks.0.attn.q_bias" in state_dict,
        layer_norm_eps=1e-6,  # EVA's blocks use eps 1e-6 (LAVIS's ln_vision uses 1e-5; transformers keeps one eps)
    )
    if "num_attention_heads" not in overrides:
        values["num_attention_heads"] = _guess_heads(hidden, _KNOWN_VISION_HEADS, "vision tower")
    values.update(overrides)
    return Blip2VisionConfig(**values)


def infer_qformer_config(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> dict[str, Any]:
    """Q-Former settings (a dict for `CSMCIRConfig(qformer_config=...)`) sized from `Qformer.bert.*`; `overrides` win."""
    prefix = "Qformer.bert.encoder.layer."
    layers = _layer_indices(state_dict, re.escape(prefix) + r"(\d+)\.")
    if not layers:
        raise ValueError("checkpoint has no Q-Former layers (`Qformer.bert.encoder.layer.N.*`)")
    num_layers = layers[-1] + 1
    cross = _layer_indices(state_dict, re.escape(prefix) + r"(\d+)\.crossattention\.")
    if "cross_attention_frequency" in overrides:
        frequency = overrides["cross_attention_frequency"]
    else:
        if not cross or cross[0] != 0:
            raise ValueError(f"Q-Former cross-attention layers {cross}: BLIP-2 expects them at 0, f, 2f, ...")
        frequency = cross[1] - cross[0] if len(cross) > 1 else num_layers
        if cross != list(range(0, num_layers, frequency)):
            raise ValueError(f"Q-Former cross-attention layers {cross} are not every {frequency}-th of {num_layers} layers")
    hidden = _require(state_dict, f"{prefix}0.attention.self.query.weight", "the Q-Former width").shape[0]
    intermediate_key = f"{prefix}0.intermediate_query.dense.weight"
    values: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        intermediate_size=_require(state_dict, intermediate_key, "the Q-Former FFN width").shape[0],
        cross_attention_frequency=frequency,
        encoder_hidden_size=_require(
            state_dict, f"{prefix}0.crossattention.self.key.weight", "the vision width seen by the Q-Former"
        ).shape[1],
        use_qformer_text_input=True,
    )
    if "Qformer.bert.embeddings.word_embeddings.weight" in state_dict:
        values["vocab_size"] = state_dict["Qformer.bert.embeddings.word_embeddings.weight"].shape[0]
    if "Qformer.bert.embeddings.position_embeddings.weight" in state_dict:
        values["max_position_embeddings"] = state_dict["Qformer.bert.embeddings.position_embeddings.weight"].shape[0]
    if "num_attention_heads" not in overrides:
        values["num_attention_heads"] = _guess_heads(hidden, {768: 12}, "Q-Former")
    values.update(overrides)
    Blip2QFormerConfig(**values)  # validate early, with transformers' own checks
    return values


def infer_csmcir_config(
    state_dict: Mapping[str, torch.Tensor],
    vision_config: dict[str, Any] | None = None,
    qformer_config: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> CSMCIRConfig:
    """A `CSMCIRConfig` whose every shape matches a LAVIS-format state dict.

    Sizes come from tensor shapes; attention head counts (not visible in shapes) follow BLIP-2 (ViT-g: 16, Q-Former
    768: 12) unless given in `vision_config` / `qformer_config`. The temperature is read from `temp`.
    """
    vision = infer_vision_config(state_dict, **(vision_config or {}))
    qformer = infer_qformer_config(state_dict, **(qformer_config or {}))
    settings: dict[str, Any] = dict(vision_config=vision, qformer_config=qformer)
    if "query_tokens" in state_dict:
        settings["num_query_tokens"] = state_dict["query_tokens"].shape[1]
    for key in ("vision_proj.weight", "text_proj.weight"):
        if key in state_dict:
            settings["embed_dim"] = state_dict[key].shape[0]
            break
    if "temp" in state_dict:
        settings["temperature"] = float(state_dict["temp"].float().reshape(-1)[0])
    max_positions = qformer.get("max_position_embeddings", 512)
    settings["max_text_length"] = min(32, max_positions)
    settings.update(config_overrides)
    return CSMCIRConfig(**settings)


# ------------------------------------------------------------------------------------------- conversion


def convert_lavis_state_dict(
    lavis_state_dict: Mapping[str, torch.Tensor], model_state_dict: Mapping[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], LavisConversionReport]:
    """Rename a LAVIS state dict into CSMCIR names.

    EVA's per-block `q_bias` / `v_bias` become `qkv.bias = concat(q_bias, 0, v_bias)`; `temp` of shape `(1,)` or `()`
    becomes the scalar `temperature`. When `model_state_dict` (a CSMCIR model's) is given, shapes are checked
    (a mismatch is a ValueError naming the key), a second tower (`share_qformer=False`) is filled with copies of the
    shared tower, and the report's `filled` / `unfilled` lists are computed against it.
    """
    converted: dict[str, torch.Tensor] = {}
    report = LavisConversionReport()
    qv_biases: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in lavis_state_dict.items():
        match = _EVA_QV_BIAS.fullmatch(key)
        if match:
            qv_biases.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
            continue
        target = lavis_key_to_csmcir(key)
        if target is None:
            report.unmapped[key] = _unmapped_reason(key)
            continue
        if target == "temperature":
            if tensor.numel() != 1:
                raise ValueError(f"checkpoint key 'temp' must hold one value, got shape {tuple(tensor.shape)}")
            tensor = tensor.reshape(())
        converted[target] = tensor
    for block, biases in sorted(qv_biases.items()):
        if set(biases) != {"q_bias", "v_bias"}:
            present, absent = next(iter(biases)), ({"q_bias", "v_bias"} - set(biases)).pop()
            raise ValueError(
                f"visual_encoder.blocks.{block}.attn has {present} but no {absent}: EVA stores both (its qkv bias is "
                "(q_bias, 0, v_bias))"
            )
        q_bias, v_bias = biases["q_bias"], biases["v_bias"]
        converted[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat(
            [q_bias, torch.zeros_like(q_bias), v_bias]
        )

    if model_state_dict is None:
        return converted, report
    tower_keys = [k for k in model_state_dict if k.startswith("target_tower.")]
    for key in tower_keys:  # the unshared ablation starts both towers from the same weights
        source = key[len("target_tower."):]
        if source in converted:
            converted[key] = converted[source]
    for key, tensor in converted.items():
        if key not in model_state_dict:
            raise ValueError(f"converted key {key!r} does not exist in the CSMCIR model: the config does not match")
        expected = tuple(model_state_dict[key].shape)
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"shape mismatch for {key!r}: the CSMCIR config expects {expected}, the checkpoint has "
                f"{tuple(tensor.shape)}; infer the config from the checkpoint (infer_csmcir_config) or fix it"
            )
    report.filled = sorted(converted)
    report.unfilled = [k for k in model_state_dict if k not in converted]
    return converted, report


def convert_lavis_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    config: CSMCIRConfig | None = None,
    allow_missing: bool = False,
    state_dict_key: str | None = None,
    vision_config: dict[str, Any] | None = None,
    qformer_config: dict[str, Any] | None = None,
    scoring: str | None = None,
    **config_overrides: Any,
) -> tuple[CSMCIRModel, LavisConversionReport]:
    """Build a `CSMCIRModel` holding a LAVIS-format checkpoint's weights.

    Args:
        checkpoint: a path (read with `torch.load(weights_only=True)`) or an already loaded LAVIS state dict.
        config: the CSMCIR config; inferred from the checkpoint's shapes when None (`infer_csmcir_config`).
        allow_missing: return a model even when some of its weights were not in the checkpoint. Without it, a
            ValueError lists them: a model with random pieces would silently retrieve garbage.
        state_dict_key: which entry of a checkpoint with several state dicts to use.
        vision_config, qformer_config, config_overrides: passed to `infer_csmcir_config`.
        scoring: the scoring preset (``sprc``, ``csmcir-authors``, ``ours``); None or ``"auto"`` detects it from the
            method extras (`detect_scoring_preset`). Its model settings are applied to the config (explicit
            `config_overrides` win); the processor's half is applied by `convert_lavis_to_folder`.

    Returns:
        The model (eval mode) and a `LavisConversionReport`. Unmapped checkpoint keys are logged as warnings.
    """
    if isinstance(checkpoint, Mapping):
        state_dict = extract_state_dict(checkpoint, state_dict_key)
    else:
        state_dict = load_lavis_checkpoint(checkpoint, state_dict_key)
    if scoring is None or scoring == "auto":
        scoring, selected_by = detect_scoring_preset(state_dict)
    else:
        get_scoring_preset(scoring)
        selected_by = "named (--preset)"
    preset = SCORING_PRESETS[scoring]
    if config is None:
        config = infer_csmcir_config(state_dict, vision_config, qformer_config,
                                     **{**preset.model, **config_overrides})
    else:
        for key, value in preset.model.items():
            setattr(config, key, config_overrides.get(key, value))
    model = CSMCIRModel(config)
    converted, report = convert_lavis_state_dict(state_dict, model.state_dict())
    report.scoring = {"preset": scoring, "selected_by": selected_by,
                      **{key: getattr(config, key) for key in preset.model}, **preset.processor}
    for key, action in METHOD_EXTRAS.items():
        if key in state_dict:
            report.extras[key] = action
            report.extra_tensors[key] = state_dict[key]
    if report.unmapped:
        logger.warning(
            "%d checkpoint keys not converted:\n%s",
            len(report.unmapped),
            "\n".join(f"  {k}: {r}" for k, r in sorted(report.unmapped.items())),
        )
    if report.unfilled:
        listing = "\n".join(f"  {key}" for key in report.unfilled)
        if not allow_missing:
            raise ValueError(
                f"{len(report.unfilled)} CSMCIR weights are not in the checkpoint and would stay randomly initialised:\n"
                f"{listing}\nRefusing to build a partly random model; pass allow_missing=True (--allow_missing) to "
                "accept it (e.g. to fine-tune those parts)."
            )
        logger.warning("%d CSMCIR weights left at their fresh initialisation:\n%s", len(report.unfilled), listing)
    model.load_state_dict(converted, strict=False)
    return model.eval(), report


def convert_lavis_to_folder(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tokenizer_name_or_path: str | None = None,
    overwrite: bool = False,
    allow_missing: bool = False,
    state_dict_key: str | None = None,
    vision_config: dict[str, Any] | None = None,
    qformer_config: dict[str, Any] | None = None,
    scoring: str | None = None,
) -> LavisConversionReport:
    """Convert a LAVIS-format checkpoint and save model + processor + ``conversion_report.json`` into ``output_dir``.

    ``scoring`` names the scoring preset (None / ``"auto"``: detected, see `convert_lavis_checkpoint`); the model's
    computation and the processor's preprocessing both follow it. Method extras (``prompt_tokens``,
    ``token_importance``) are saved unchanged as ``method_extras.safetensors``.

    The processor is :func:`~.processor.build_processor`'s (BLIP-2's preprocessing, the Q-Former's tokenizer). The
    folder is assembled in a temporary folder beside ``output_dir`` and renamed into place, so a failed run leaves
    nothing half-written. ``conversion_report.json`` holds ``checkpoint`` (its path relative to the folder, or
    ``<local>/<name>``; never absolute), ``checkpoint_bytes`` and :meth:`LavisConversionReport.to_dict`.

    Raises:
        ValueError: when ``output_dir`` exists and is not empty (without ``overwrite``), or the conversion is refused.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it")
    model, report = convert_lavis_checkpoint(
        checkpoint,
        allow_missing=allow_missing,
        state_dict_key=state_dict_key,
        vision_config=vision_config,
        qformer_config=qformer_config,
        scoring=scoring,
    )
    processor = build_processor(model.config, tokenizer_name_or_path, scoring=report.scoring["preset"])
    # Where the checkpoint was, as a publishable folder may record it: relative when it sits beside the output,
    # else "<local>/<file name>" (no user name or mount point travels to the Hub).
    summary = {"checkpoint": portable_path(os.path.abspath(checkpoint), output_dir),
               "checkpoint_bytes": os.path.getsize(checkpoint), **report.to_dict()}

    # The whole folder is staged and swapped in at once: an interrupted run leaves the old folder (or nothing).
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_json_atomically(staging / "conversion_report.json", summary, indent=2)
        if report.extra_tensors:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in report.extra_tensors.items()}, str(staging / METHOD_EXTRAS_NAME))
    return report


__all__ = [
    "KNOWN_UNMAPPED",
    "LAVIS_TO_CSMCIR_RENAMES",
    "METHOD_EXTRAS",
    "METHOD_EXTRAS_NAME",
    "detect_scoring_preset",
    "LavisConversionReport",
    "convert_lavis_checkpoint",
    "convert_lavis_state_dict",
    "convert_lavis_to_folder",
    "extract_state_dict",
    "infer_csmcir_config",
    "infer_qformer_config",
    "infer_vision_config",
    "lavis_key_to_csmcir",
    "load_lavis_checkpoint",
]
