"""Vision backbones that transformers' Ovis2 does not cover, plugged in as `vision_tower.transformer`
(its feature extractor), so the Ovis2 head, hidden-stride merge, VET, indicators, loss and generation
stay transformers' code.

Every backbone takes `pixel_values [B, 3, S, S]` and returns `last_hidden_state [B, L, D]`: features of
the last block BEFORE any final norm (the final norm / pooling head is replaced by Identity or not
built), CLS tokens dropped, L a square number (a feature map of side S / stride). Each backbone
brings its own image preprocessing (`preprocessing()`: mean, std, resample), which configures the
Ovis2 image processor. A backbone is described by a JSON-able `spec` kept in `config.ovis_train`,
so a saved model rebuilds it before loading its weights.

Kinds: siglip (SigLIP and the fixed-resolution SigLIP2 checkpoints, which use the SigLIP
architecture), siglip2 (the NaFlex `Siglip2VisionModel`, run at one fixed resolution: images are
patchified here), clip (CLIP vision), timm (any timm model; a 4-D feature map becomes tokens).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from ovis_train.errors import ConfigError

HF_BACKBONES = {
    "siglip": (SiglipVisionConfig, SiglipVisionModel),
    "siglip2": (Siglip2VisionConfig, Siglip2VisionModel),
    "clip": (CLIPVisionConfig, CLIPVisionModel),
}
_SIGLIP_NORM = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=PILImageResampling.BICUBIC)
_CLIP_NORM = dict(image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), resample=PILImageResampling.BICUBIC)
_PREPROCESSING = {"siglip": _SIGLIP_NORM, "siglip2": _SIGLIP_NORM, "clip": _CLIP_NORM}


class VisionBackbone(nn.Module):
    """Interface: forward(pixel_values) -> BaseModelOutput(last_hidden_state [B, L, D])."""

    spec: dict
    feature_dim: int
    patch_size: int  # input pixels per output token side (the feature map's stride)

    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks in input-to-output order (for "last N blocks" freeze rules)."""
        raise NotImplementedError

    def preprocessing(self) -> dict:
        raise NotImplementedError


class HFVisionBackbone(VisionBackbone):
    """A transformers SigLIP / SigLIP2 / CLIP vision model without its final norm and pooling head."""

    def __init__(self, kind: str, model: nn.Module):
        super().__init__()
        self.kind, self.model = kind, model
        model.post_layernorm = nn.Identity()  # features before the final norm
        config = model.config
        self.spec = {"kind": kind, "config": config.to_dict()}
        self.feature_dim, self.patch_size = config.hidden_size, config.patch_size

    def blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layers)

    def preprocessing(self) -> dict:
        return dict(_PREPROCESSING[self.kind])

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutput:
        pixel_values = pixel_values.to(self.model.dtype)
        if self.kind == "siglip2":
            n_rows, n_cols = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
            patches = torch.stack([convert_image_to_patches(image, self.patch_size) for image in pixel_values])
            mask = torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device)
            shapes = torch.tensor([[n_rows, n_cols]] * len(patches), device=patches.device)
            features = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        else:
            features = self.model(pixel_values=pixel_values)
        hidden = features.last_hidden_state
        if self.kind == "clip":
            hidden = hidden[:, 1:]  # drop CLS: Ovis uses patch tokens only
        return BaseModelOutput(last_hidden_state=hidden)


def _hf_config(kind: str, config: dict, attn_implementation: str | None = None):
    config_cls = HF_BACKBONES[kind][0]
    config = config_cls.from_dict(config)
    if kind != "clip":
        config.vision_use_head = False  # the pooling head would be an unused parameter set
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


def hf_backbone_config(kind: str, image_size: int, shape: dict) -> dict:
    """A random-init config of the given shape (tiny tests, pretrained=False builds)."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")
    config = {k: shape[k] for k in keys}
    if kind == "siglip2":  # NaFlex: position grid of num_patches, interpolated to the image's grid
        config["num_patches"] = (image_size // shape["patch_size"]) ** 2
    else:
        config["image_size"] = image_size
    return HF_BACKBONES[kind][0](**config).to_dict()


def load_hf_backbone(
    kind: str, name_or_path: str, image_size: int, dtype=None, attn_implementation: str | None = None
) -> HFVisionBackbone:
    config_cls, model_cls = HF_BACKBONES[kind]
    config = config_cls.from_pretrained(name_or_path)
    # siglip2 interpolates its position table to any grid; the others are tied to their training size
    if kind != "siglip2" and config.image_size != image_size:
        raise ConfigError(
            f"{name_or_path} is trained at image_size={config.image_size}: set model.image_size={config.image_size} "
            f"(got {image_size}); only siglip2 interpolates its position embeddings"
        )
    config = _hf_config(kind, config.to_dict(), attn_implementation)
    model = model_cls.from_pretrained(name_or_path, config=config, dtype=dtype)
    return HFVisionBackbone(kind, model)


class TimmBackbone(VisionBackbone):
    """A timm model's feature map (forward_features) as tokens. BatchNorm layers always run in eval
    mode (running statistics): a frozen CNN must not drift with the batches, nor depend on them."""

    def __init__(self, model_name: str):
        import timm

        super().__init__()
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
        if hasattr(self.model, "num_prefix_tokens") and isinstance(getattr(self.model, "norm", None), nn.Module):
            self.model.norm = nn.Identity()  # ViT-style final norm: take features before it
        self.spec = {"kind": "timm", "model_name": model_name}
        self.feature_dim = self.model.num_features
        self.patch_size = self.model.feature_info[-1]["reduction"]
        self.train(False)

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def preprocessing(self) -> dict:
        import timm.data

        data = timm.data.resolve_data_config({}, model=self.model)
        resample = {"bilinear": PILImageResampling.BILINEAR}.get(data["interpolation"], PILImageResampling.BICUBIC)
        return dict(image_mean=list(data["mean"]), image_std=list(data["std"]), resample=resample)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def load_weights_by_position(self, path: str) -> None:
        """Load a state dict saved by another implementation of the same architecture: tensors are
        matched in order and every shape is checked; extra trailing tensors (a classifier) are ignored."""
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = self.model.state_dict()
        if len(source) < len(target):
            raise ConfigError(f"{path} has {len(source)} tensors, {self.spec['model_name']} needs {len(target)}")
        mapped = {}
        for (name, tensor), (source_name, value) in zip(target.items(), source.items()):
            if tuple(tensor.shape) != tuple(value.shape):
                raise ConfigError(
                    f"{path}: tensor {source_name} {tuple(value.shape)} does not fit {name} {tuple(tensor.shape)}: "
                    f"the file is not a {self.spec['model_name']} checkpoint"
                )
            mapped[name] = value
        self.model.load_state_dict(mapped, strict=True)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutput:
        features = self.model.forward_features(pixel_values.to(next(self.model.parameters()).dtype))
        if features.ndim == 4:  # [B, C, h, w] feature map -> [B, h*w, C] tokens
            features = features.flatten(2).transpose(1, 2)
        else:  # [B, prefix + N, C] token sequence
            features = features[:, getattr(self.model, "num_prefix_tokens", 0) :]
        return BaseModelOutput(last_hidden_state=features)


def build_backbone(spec: dict, attn_implementation: str | None = None) -> VisionBackbone:
    """Rebuild a backbone (random weights) from its spec; weights are then loaded by the caller."""
    if spec["kind"] == "timm":
        return TimmBackbone(spec["model_name"])
    kind = spec["kind"]
    return HFVisionBackbone(kind, HF_BACKBONES[kind][1](_hf_config(kind, spec["config"], attn_implementation)))
