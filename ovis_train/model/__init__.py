"""ovis_train.model: the Ovis model every phase trains, built on transformers' native Ovis2.

    from ovis_train.model import ModelConfig, build_model, load_model, model_components
    bundle = build_model(ModelConfig(preset="tiny"))        # -> ModelBundle(model, tokenizer, processor)
    bundle.save_pretrained(path); bundle = load_model(path)  # or any HF Ovis2 checkpoint / hub id

Modules: config (ModelConfig, validation), presets (tiny, demo, ovis2_1b, ovis2_2b, ovis2_5_2b),
tokens (image special tokens, tiny tokenizer), language (the LLM side), vision (the
vision side, AIMv2 weight mapping, image processor), backbones (SigLIP / SigLIP2 / CLIP / timm
plugged in as the ViT), modeling (OvisModel: fp32 softmax, vet|mlp connector, image-free touch),
vet_init (how the VET rows start), bundle (ModelBundle, save / load), build (build_model), components (model_components),
caption (caption images with a saved model).

Component map (`model_components(model)`, for freeze rules; names from
`named_parameters(remove_duplicate=False)`; every parameter is in exactly one of the last five):

| component        | parameter names                                                              |
|------------------|------------------------------------------------------------------------------|
| vit.blocks.i     | native: model.vision_tower.transformer.encoder.layers.{i}.*                  |
|                  | siglip/siglip2/clip: model.vision_tower.transformer.model.encoder.layers.{i}.*|
|                  | timm: model.vision_tower.transformer.model.blocks.{i}.* (a timm stage)       |
| vit              | model.vision_tower.transformer.* (embeddings, all blocks, norms)             |
| visual_head      | model.vision_tower.head_linear.*, head_norm.* (vet); vision_tower.projector.* (mlp) |
| vet              | model.visual_embeddings_table.weight (K rows; the last n_ind are indicators) |
| llm              | model.language_model.* (incl. the input embeddings)                          |
| lm_head          | lm_head.weight (listed even when tied to the input embeddings)               |
"""

from .build import build_model
from .bundle import ModelBundle, load_model
from .components import model_components
from .config import ModelConfig
from .modeling import OvisModel
from .presets import PRESETS, resolve_config
from .tokens import image_token_ids

__all__ = [
    "ModelBundle",
    "ModelConfig",
    "OvisModel",
    "PRESETS",
    "build_model",
    "image_token_ids",
    "load_model",
    "model_components",
    "resolve_config",
]
