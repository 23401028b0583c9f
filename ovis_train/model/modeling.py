"""`OvisModel`: transformers' `Ovis2ForConditionalGeneration` plus what it lacks, by subclassing and
swapping small modules (state-dict names stay transformers' own, so native exports load anywhere):

- fp32 visual softmax (`softmax_fp32`): the head's LayerNorm returns fp32, so the softmax that follows
  runs in fp32; the VET casts the probabilities back to its own dtype;
- `connector="mlp"`: the 2-layer projector ablation. The Ovis2 head gets zero width, the VET keeps only
  the indicator rows, and `vision_tower.projector` maps the merged ViT features to LLM embeddings;
- `tokenize_function="gelu"` (vision config): the softmax ablation. Same head, LayerNorm and width-K
  table, GELU in place of the softmax, so `gelu(LayerNorm(head(x))) @ VET` is an MLP with a K-wide
  hidden layer and the same parameter count as the VET (plain transformers cannot run it: load with
  `load_model`);
- plugged vision backbones (SigLIP, SigLIP2, CLIP, timm) replace `vision_tower.transformer`;
- a forward without images still touches every visual parameter with weight 0 (DDP / ZeRO need it), in
  training and in held-out scoring alike (ZeRO-3 gathers parameters in every forward: a rank whose eval
  batch is text-only must run the tower too); only generation's decoding steps (a filled cache) skip it;
- `visual_chunk_size`: the head -> softmax -> VET path chunked over tokens, recomputed in backward.

These options live in `config.ovis_train` (a plain dict in config.json that plain transformers ignores).
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from torch import nn
from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2Model
from transformers.models.ovis2.modeling_ovis2 import (
    BaseModelOutputWithVisualIndicatorFeatures,
    Ovis2VisionModel,
    Ovis2VisualEmbeddingTable,
)

DEFAULT_OPTIONS = {"connector": "vet", "softmax_fp32": True, "backbone": None, "visual_chunk_size": None}


def ovis_options(config: Ovis2Config) -> dict:
    """The ovis-train options stored in an Ovis2 config (defaults for plain Ovis2 checkpoints)."""
    return {**DEFAULT_OPTIONS, **(getattr(config, "ovis_train", None) or {})}


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed and returned in fp32, so the visual softmax after it runs in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class VisualEmbeddingTable(Ovis2VisualEmbeddingTable):
    """The VET, casting (fp32) probabilities to the table's dtype before `probs @ weight`."""

    def forward(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        if visual_tokens.is_floating_point():
            visual_tokens = visual_tokens.to(self.weight.dtype)
        return super().forward(visual_tokens)


class GeluVisionModel(Ovis2VisionModel):
    """The vision tower with GELU where Ovis2 has its softmax: `pooler_output` holds the GELU weights the
    VET multiplies (not probabilities; VET health reads their positive part)."""

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithVisualIndicatorFeatures:
        from .chunked_visual import merge_hidden_stride

        merged = merge_hidden_stride(self.transformer(pixel_values)[0], self.config.hidden_stride)
        weights = nn.functional.gelu(self.head_norm(self.head_linear(merged)))
        return BaseModelOutputWithVisualIndicatorFeatures(last_hidden_state=merged, pooler_output=weights)


class ZeroWidthHead(nn.Module):
    """Stands in for the Ovis2 visual head in mlp mode: no visual vocabulary, no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :0]


class MlpProjector(nn.Sequential):
    """The standard 2-layer (LLaVA-style) projector: Linear -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__(nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))


def _retype(module: nn.Module, subclass: type) -> None:
    # Same parameters, subclass behaviour: avoids re-allocating (possibly large) tensors.
    assert issubclass(subclass, type(module)), (subclass, type(module))
    module.__class__ = subclass


class OvisMultimodalModel(Ovis2Model):
    """The inner Ovis2Model, with the mlp connector's image features. Generation pre-encodes images
    through this class's `get_image_features`, so the connector must live here."""

    connector = "vet"
    visual_chunk_size = None  # set: the memory-efficient visual path (chunked_visual.py)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        if self.connector == "vet" and self.visual_chunk_size:
            from .chunked_visual import chunked_image_features

            return chunked_image_features(self, pixel_values, self.visual_chunk_size)
        if self.connector == "vet":
            return super().get_image_features(pixel_values=pixel_values, **kwargs)
        kwargs["return_dict"] = True
        outputs = self.vision_tower(pixel_values, **kwargs)
        outputs.pooler_output = self.vision_tower.projector(outputs.last_hidden_state)
        table = self.visual_embeddings_table  # in mlp mode it holds only the indicator rows
        outputs.visual_indicator_features = table(torch.arange(table.num_embeddings, device=table.weight.device))
        return outputs

    def forward(self, input_ids=None, pixel_values=None, inputs_embeds=None, mm_encoder_outputs=None, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        decoding = cache is not None and cache.get_seq_length() > 0  # the prompt's forward already ran the tower
        if pixel_values is None and mm_encoder_outputs is None and not decoding:
            # Same module order as an image forward (token embeddings, visual path, LLM): ZeRO-3 gathers each
            # module's parameters as it runs, and ranks that gather in different orders deadlock.
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = inputs_embeds + self._image_free_touch().to(inputs_embeds.dtype)
            input_ids = None
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, inputs_embeds=inputs_embeds,
                               mm_encoder_outputs=mm_encoder_outputs, **kwargs)

    def _image_free_touch(self) -> torch.Tensor:
        """0-weighted sum over the visual path run on one blank crop: gives every visual parameter a grad."""
        vision = self.config.vision_config
        blank = torch.zeros(1, vision.num_channels, vision.image_size, vision.image_size, device=self.device)
        features = self.get_image_features(blank.to(self.dtype))
        return 0.0 * (features.pooler_output.float().sum() + features.visual_indicator_features.float().sum())


class OvisModel(Ovis2ForConditionalGeneration):
    def __init__(self, config: Ovis2Config):
        options = ovis_options(config)
        with warnings.catch_warnings():  # mlp mode builds a zero-width head before replacing it
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            super().__init__(config)
        _retype(self.model, OvisMultimodalModel)
        self.model.connector = options["connector"]
        self.model.visual_chunk_size = options["visual_chunk_size"]
        tower = self.model.vision_tower
        if options["backbone"] is not None:
            from .backbones import build_backbone

            tower.transformer = build_backbone(options["backbone"], config._attn_implementation)
        if options["connector"] == "mlp":
            merged_dim = tower.head_linear.in_features
            tower.head_linear, tower.head_norm = ZeroWidthHead(), nn.Identity()
            tower.projector = MlpProjector(merged_dim, config.hidden_size)
            for layer in tower.projector:  # built after transformers' init: torch's own init (build.materialize)
                layer._torch_init_only = True
        elif options["softmax_fp32"]:
            _retype(tower.head_norm, Float32LayerNorm)
        if options["connector"] == "vet" and config.vision_config.tokenize_function == "gelu":
            _retype(tower, GeluVisionModel)
        _retype(self.model.visual_embeddings_table, VisualEmbeddingTable)

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:  # name the transformers class, so plain transformers tools recognise the folder
            path = os.path.join(save_directory, "config.json")
            with open(path) as f:
                config = json.load(f)
            config["architectures"] = [Ovis2ForConditionalGeneration.__name__]
            with open(path, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")
