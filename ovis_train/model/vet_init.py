"""How the VET's visual-vocabulary rows start.

`normal` (Ovis2's own init): rows drawn N(0, initializer_range). At P1's start the visual softmax is
nearly uniform, so an image's embedding `probs @ VET` is a mean over ~K random rows: about
initializer_range / sqrt(K) per dimension, hundreds of times smaller than a text token's embedding,
and almost the same for every image. P1 then spends most of its steps growing the rows.

`text_embeddings`: each visual row starts as the input embedding of a text token drawn at random
(torch's global RNG, so the trainer's seed fixes it). Visual embeddings start at the LLM's own scale
and in directions it reads; on the demo, P1's held-out caption accuracy went from 0.33 after 150 steps
(normal) to 0.75 after 100 steps. Indicator rows keep their init either way (they are learned markers, not words).

`from:<export>` (warm start): the visual head and VET of a trained model with K visual rows start a
model with K' rows (same vision features and LLM width; any other part comes from the usual build).
Rule, for new visual row j of K' and old rows of K:
- split (K' >= K): row j copies old row j mod K (head row, LayerNorm weight, VET row); each copy's
  LayerNorm bias is lowered by log(copies of that row), so the copies share the old row's probability;
- merge (K' < K): row j is the mean of old rows {i : i mod K' = j}, its LayerNorm bias raised by
  log(rows merged), so the merged row takes about their summed probability.
When K' is a multiple of K the split model computes the same image embeddings as the trained one (the
LayerNorm statistics over a tiled row set are unchanged); otherwise it is close. The indicator rows are
copied as they are (the number of indicator rows must match).
"""

from __future__ import annotations

import json
import os

import torch

from ovis_train.errors import ConfigError

FROM_EXPORT = "from:"  # model.vet_init=from:<export folder>
_HEAD, _NORM, _VET = ("model.vision_tower.head_linear.weight", "model.vision_tower.head_norm.",
                      "model.visual_embeddings_table.weight")


@torch.no_grad()
def init_vet_from_text_embeddings(model, tokenizer) -> None:
    """Copy random text tokens' input embeddings into the VET's visual rows (special tokens excluded)."""
    table = model.model.visual_embeddings_table.weight
    n_visual = table.shape[0] - model.config.vision_config.num_visual_indicator_tokens
    if n_visual <= 0:  # mlp connector: the VET holds only indicator rows
        return
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    text_ids = torch.arange(len(tokenizer))
    text_ids = text_ids[~torch.isin(text_ids, special)]
    picks = text_ids[torch.randint(len(text_ids), (n_visual,))]
    embeddings = model.get_input_embeddings().weight
    table[:n_visual] = embeddings[picks].to(table.dtype)


def _read_tensors(folder: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Named tensors of a from_pretrained folder (one or several safetensors files), nothing else read."""
    from safetensors import safe_open

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = {name: json.load(f)["weight_map"].get(name) for name in names}
    else:
        files = dict.fromkeys(names, "model.safetensors")
    missing = [name for name, file in files.items() if file is None or not os.path.isfile(os.path.join(folder, file))]
    if missing:
        raise ConfigError(f"model.vet_init=from:{folder}: no {missing[0]} there (a VET model's export folder holds it: "
                         "run_dir/export of a phase with model.connector=vet)")
    tensors = {}
    for file in set(files.values()):
        with safe_open(os.path.join(folder, file), "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in names if files[name] == file})
    return tensors


def resize_rows(rows: torch.Tensor, size: int) -> torch.Tensor:
    """[K, ...] -> [size, ...] by the split / merge rule: row j takes old row j mod K (split) or the mean
    of old rows {i : i mod size = j} (merge)."""
    old = rows.shape[0]
    if size >= old:
        return rows[torch.arange(size) % old].clone()
    groups = torch.arange(old) % size
    summed = torch.zeros(size, *rows.shape[1:], dtype=torch.float64).index_add_(0, groups, rows.double())
    return (summed / torch.bincount(groups, minlength=size).double().view(-1, *[1] * (rows.dim() - 1))).to(rows.dtype)


def bias_shift(old: int, size: int) -> torch.Tensor:
    """[size]: what the rule adds to each new row's LayerNorm bias: -log(copies) on a split, +log(merged)
    on a merge."""
    if size >= old:
        copies = torch.bincount(torch.arange(size) % old, minlength=old).double()
        return -copies.log()[torch.arange(size) % old]
    return torch.bincount(torch.arange(old) % size, minlength=size).double().log()


@torch.no_grad()
def init_vet_from_export(model, folder: str) -> None:
    """Warm start (see the module docstring): the visual head, its LayerNorm and the VET from ``folder``."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConfigError(f"model.vet_init=from:{folder}: not an export folder (no config.json there); give "
                          "a trained VET model's run_dir/export")
    with open(os.path.join(folder, "config.json")) as f:
        source = json.load(f)
    if (source.get("ovis_train") or {}).get("connector", "vet") != "vet":
        raise ConfigError(f"model.vet_init=from:{folder}: that model has no visual vocabulary (connector "
                         f"{source['ovis_train']['connector']}); warm-start from a model.connector=vet export")
    tower, table = model.model.vision_tower, model.model.visual_embeddings_table.weight
    n_indicators = model.config.vision_config.num_visual_indicator_tokens
    old = _read_tensors(folder, [_HEAD, _NORM + "weight", _NORM + "bias", _VET])
    old_indicators = source["vision_config"]["num_visual_indicator_tokens"]
    head, vet = old[_HEAD], old[_VET]
    problems = [f"{what} {theirs} here {ours}" for what, theirs, ours in (
        ("indicator rows", old_indicators, n_indicators),
        ("visual head input width (merged ViT features)", head.shape[1], tower.head_linear.in_features),
        ("VET width (LLM hidden size)", vet.shape[1], table.shape[1])) if theirs != ours]
    if problems:
        raise ConfigError(f"model.vet_init=from:{folder} does not fit this model: {'; '.join(problems)} "
                         "(warm starts change K only: same vision tower, hidden_stride and LLM)")
    size = table.shape[0] - n_indicators
    k = head.shape[0]
    tower.head_linear.weight.copy_(resize_rows(head, size))
    tower.head_norm.weight.copy_(resize_rows(old[_NORM + "weight"], size))
    tower.head_norm.bias.copy_(resize_rows(old[_NORM + "bias"], size) + bias_shift(k, size).to(torch.float32))
    table[:size] = resize_rows(vet[:k], size).to(table.dtype)
    table[size:] = vet[k:].to(table.dtype)
