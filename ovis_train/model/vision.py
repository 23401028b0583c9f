"""The vision side of a fresh model: its Ovis2VisionConfig, a plugged backbone if any, pretrained
weights for the native tower (mapped from an AIMv2 vision model), and its image processor."""

from __future__ import annotations

import torch
from transformers import Aimv2VisionConfig, Aimv2VisionModel, Ovis2ImageProcessor, Ovis2VisionConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from ovis_train.errors import ConfigError

from .backbones import TimmBackbone, VisionBackbone, build_backbone, hf_backbone_config, load_hf_backbone
from .config import ModelConfig
from .presets import Preset

_VIT_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
# AIMv2 vision model -> Ovis2 vision transformer: the same architecture; the patch embedding is renamed
# and AIMv2's attention-pooling head is dropped (Ovis uses the patch features).
_AIMV2_RENAMES = {"embeddings.patch_embed.": "embeddings.patch_embedding."}
NATIVE_PREPROCESSING = dict(
    image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), resample=PILImageResampling.BICUBIC
)


def make_backbone(cfg: ModelConfig, preset: Preset, dtype: torch.dtype) -> VisionBackbone | None:
    """The plugged backbone (pretrained where cfg says so), or None for the native tower."""
    if cfg.vision == "native":
        return None
    if cfg.vision == "timm":
        backbone = TimmBackbone(cfg.vision_name_or_path)
        if cfg.vision_weights and cfg.pretrained:
            backbone.load_weights_by_position(cfg.vision_weights)
        return backbone
    if cfg.vision_name_or_path and cfg.pretrained:
        return load_hf_backbone(
            cfg.vision, cfg.vision_name_or_path, cfg.image_size, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    if not preset.vision_shape:
        raise ConfigError(
            f"model.vision={cfg.vision} with random weights needs shapes the preset {cfg.preset!r} does not have: "
            "set model.vision_name_or_path to a pretrained model, or use preset=tiny"
        )
    spec = {"kind": cfg.vision, "config": hf_backbone_config(cfg.vision, cfg.image_size, preset.vision_shape)}
    return build_backbone(spec, cfg.attn_implementation)


def _native_shape(cfg: ModelConfig, preset: Preset) -> dict:
    if cfg.vision_name_or_path and cfg.pretrained:
        aimv2 = Aimv2VisionConfig.from_pretrained(cfg.vision_name_or_path)
        if aimv2.image_size != cfg.image_size:  # its position table is sized for that resolution
            raise ConfigError(
                f"{cfg.vision_name_or_path} is trained at image_size={aimv2.image_size}: set "
                f"model.image_size={aimv2.image_size} (got {cfg.image_size})"
            )
        keys = (*_VIT_SHAPE_KEYS, "qkv_bias", "mlp_bias", "rms_norm_eps", "hidden_act")
        return {k: getattr(aimv2, k) for k in keys}
    return {k: preset.vision_shape[k] for k in _VIT_SHAPE_KEYS}


def vision_config(cfg: ModelConfig, preset: Preset, backbone: VisionBackbone | None) -> Ovis2VisionConfig:
    if backbone is None:
        shape = _native_shape(cfg, preset)
    else:  # the native ViT is replaced: no layers of its own; "patch" = the backbone's stride
        shape = dict(hidden_size=backbone.feature_dim, num_hidden_layers=0, patch_size=backbone.patch_size)
    # mlp connector: no visual vocabulary, the VET keeps only the indicator rows
    vocab = cfg.visual_vocab_size if cfg.connector == "vet" else cfg.num_indicator_tokens
    return Ovis2VisionConfig(
        **shape,
        image_size=cfg.image_size,
        hidden_stride=cfg.hidden_stride,
        vocab_size=vocab,
        num_visual_indicator_tokens=cfg.num_indicator_tokens,
        tokenize_function=cfg.tokenize_function,
    )


def load_aimv2_into(tower_transformer: torch.nn.Module, name_or_path: str) -> None:
    """Copy an AIMv2 vision model's weights into an Ovis2 vision transformer of the same shape."""
    aimv2 = Aimv2VisionModel.from_pretrained(name_or_path)
    state = {}
    for name, tensor in aimv2.state_dict().items():
        if name.startswith("head."):
            continue
        for old, new in _AIMV2_RENAMES.items():
            name = name.replace(old, new)
        state[name] = tensor
    missing, unexpected = tower_transformer.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"AIMv2 weights from {name_or_path} do not map onto the Ovis2 ViT: missing {missing}, unexpected {unexpected}")


def image_processor(cfg: ModelConfig, backbone: VisionBackbone | None) -> Ovis2ImageProcessor:
    preprocessing = NATIVE_PREPROCESSING if backbone is None else backbone.preprocessing()
    return Ovis2ImageProcessor(
        size={"height": cfg.image_size, "width": cfg.image_size},
        crop_to_patches=cfg.max_crops > 1,  # 1: one crop per image, whatever its size
        max_patches=cfg.max_crops,
        **preprocessing,
    )
