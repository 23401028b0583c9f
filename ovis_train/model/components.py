"""`model_components(model)`: parameter names per component, for freeze rules (see the package docstring)."""

from __future__ import annotations

from torch import nn

from .modeling import OvisModel


def _vit_blocks(model: OvisModel) -> list[nn.Module]:
    feature_extractor = model.model.vision_tower.transformer
    if hasattr(feature_extractor, "blocks"):  # a plugged backbone
        return feature_extractor.blocks()
    return list(feature_extractor.encoder.layers)  # transformers' native Ovis2 ViT


def model_components(model: OvisModel) -> dict[str, list[str]]:
    """Component -> parameter names (as in `named_parameters(remove_duplicate=False)`), keys in order
    vit.blocks.0 .. vit.blocks.{N-1}, vit, visual_head, vet, llm, lm_head. Every parameter name lands in
    exactly one of vit / visual_head / vet / llm / lm_head (tied lm_head lists its own name)."""
    prefixes = {
        "vit": "model.vision_tower.transformer.",
        "vet": "model.visual_embeddings_table.",
        "llm": "model.language_model.",
        "lm_head": "lm_head.",
        "visual_head": "model.vision_tower.",  # what is left of the tower: head_linear, head_norm, projector
    }
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    groups: dict[str, list[str]] = {key: [] for key in prefixes}
    for name in names:
        key = next((k for k, prefix in prefixes.items() if name.startswith(prefix)), None)
        if key is None:
            raise ValueError(f"parameter {name} belongs to no component: model_components needs updating")
        groups[key].append(name)

    module_names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    blocks = {}
    for index, block in enumerate(_vit_blocks(model)):
        prefix = module_names[id(block)] + "."
        blocks[f"vit.blocks.{index}"] = [name for name in groups["vit"] if name.startswith(prefix)]
    ordered = ("vit", "visual_head", "vet", "llm", "lm_head")
    return {**blocks, **{key: groups[key] for key in ordered}}
