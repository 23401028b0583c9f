"""VET analysis: which visual words a model uses, how sharply, and for which image patches.

    python -m ovis_train.analyze runs/p1/export data=fashion_mnist      # or --shards 'x-{000..009}.tar'

Modules: stats (pure statistics over probabilities [N images, T tokens, K rows]: row usage, top
rows, dead rows, per-token entropy, most confident patches, images per row), images (shards ->
crops the vision tower sees), probe (probabilities from a model's own vision tower), figures
(PNG, matplotlib Agg), report (markdown + vet_stats.json), source (model / data selection).
"""

from .stats import (
    EntropyProfile,
    Reduced,
    RowImages,
    dead_rows,
    entropy_profile,
    images_for_rows,
    most_confident_patches,
    reduce_probs,
    row_peak,
    row_usage,
    token_entropy,
    top1_rows,
    top_rows,
)

__all__ = [
    "EntropyProfile", "Reduced", "RowImages", "dead_rows", "entropy_profile", "images_for_rows",
    "most_confident_patches", "reduce_probs", "row_peak", "row_usage", "token_entropy", "top1_rows", "top_rows",
]
