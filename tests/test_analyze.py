"""VET analysis: the statistics against values worked out by hand, and the report end to end."""

import math

import pytest
import torch
import yaml
from PIL import Image

from ovis_train.analyze import (
    Reduced,
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

# 2 images x 2 tokens x 4 rows
PROBS = torch.tensor([
    [[0.70, 0.10, 0.10, 0.10], [0.50, 0.50, 0.00, 0.00]],
    [[0.25, 0.25, 0.25, 0.25], [0.00, 0.00, 0.00, 1.00]],
])
H00 = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))  # 0.940


def test_row_usage_is_the_summed_probability_per_row():
    assert row_usage(PROBS).tolist() == pytest.approx([1.45, 0.85, 0.35, 1.35])
    rows, usage = top_rows(PROBS, 2)
    assert rows.tolist() == [0, 3] and usage.tolist() == pytest.approx([1.45, 1.35])


def test_dead_rows_are_never_above_the_threshold():
    assert row_peak(PROBS).tolist() == pytest.approx([0.7, 0.5, 0.25, 1.0])
    assert dead_rows(PROBS, 0.3).tolist() == [2]
    assert dead_rows(PROBS, 0.5).tolist() == [1, 2]  # 0.5 is not above 0.5
    assert dead_rows(PROBS, 1.0).tolist() == [0, 1, 2, 3]
    assert top1_rows(PROBS).tolist() == [0, 3]


def test_entropy_per_token_and_sharp_soft_shares():
    expected = [[H00, math.log(2)], [math.log(4), 0.0]]
    assert token_entropy(PROBS).tolist() == [pytest.approx(row, abs=1e-6) for row in expected]
    profile = entropy_profile(PROBS, sharp_below=0.5, soft_above=0.9)
    assert profile.sharp_share == 0.25  # the one-hot token
    assert profile.soft_share == 0.5  # H00 = 0.94 and the uniform token
    assert profile.mean == pytest.approx((H00 + math.log(2) + math.log(4)) / 4, abs=1e-6)
    assert profile.quantiles[0.5] == pytest.approx((math.log(2) + H00) / 2, abs=1e-6)
    assert profile.max_entropy == pytest.approx(math.log(4))
    default = entropy_profile(PROBS)  # sharp: under 2 effective rows; soft: over sqrt(K) effective rows
    assert default.sharp_below == pytest.approx(math.log(2)) and default.soft_above == pytest.approx(math.log(4) / 2)


def test_most_confident_patches_and_images_per_row():
    confidence, token, row = most_confident_patches(PROBS, 1)
    assert confidence.flatten().tolist() == pytest.approx([0.7, 1.0])
    assert token.flatten().tolist() == [0, 1] and row.flatten().tolist() == [0, 3]
    (info,) = images_for_rows(PROBS, [3], 2)
    assert info.images == [1, 0] and info.tokens == [1, 0]
    assert info.masses == pytest.approx([1.25, 0.1]) and info.peaks == pytest.approx([1.0, 0.1])


def test_batched_reduction_gives_the_same_statistics():
    joined = Reduced.cat([reduce_probs(PROBS[:1]), reduce_probs(PROBS[1:])])
    assert torch.equal(row_usage(joined), row_usage(PROBS))
    assert torch.equal(dead_rows(joined, 0.3), dead_rows(PROBS, 0.3))
    assert torch.allclose(joined.entropy, token_entropy(PROBS))


# --- end to end on the tiny preset --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ovis_train.data import write_synthetic_shards
    from ovis_train.model import ModelConfig, build_model

    root = tmp_path_factory.mktemp("analyze")
    torch.manual_seed(0)
    config = ModelConfig(preset="tiny", visual_vocab_size=64)
    bundle = build_model(config)
    bundle.save_pretrained(str(root / "export"))
    shards = write_synthetic_shards(str(root / "shards"), n_samples=12, samples_per_shard=6, seed=3)
    return root, bundle, config, shards


def test_report_writes_markdown_and_decodable_figures(tiny):
    from ovis_train.analyze.__main__ import main

    root, _, _, shards = tiny
    out = root / "report"
    assert main([str(root / "export"), "--shards", "::".join(shards), "--out", str(out), "--top-rows", "4"]) == 0
    text = (out / "report.md").read_text()
    assert "12 images (crops) x 16 visual tokens, K = 59 visual rows" in text
    figures = ["usage_histogram.png", "entropy_histogram.png", "top_rows_patches.png", "confident_patches.png"]
    for name in figures:
        assert f"]({name})" in text
        path = out / name
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            image.verify()
    stats = yaml.safe_load((out / "vet_stats.json").read_text())
    assert stats["images"] == 12 and len(stats["top_rows"]) == 4


def test_a_checkpoint_gives_the_same_probabilities_as_the_export(tiny):
    from safetensors.torch import save_model

    from ovis_train.analyze.probe import visual_probabilities
    from ovis_train.analyze.source import load_bundle

    root, bundle, config, _ = tiny
    checkpoint = root / "run" / "checkpoints" / "step_00000001"
    checkpoint.mkdir(parents=True)
    save_model(bundle.model, str(checkpoint / "model.safetensors"))
    (checkpoint / "config.yaml").write_text(yaml.safe_dump({"model": config.to_dict()}))
    (checkpoint / "COMPLETE").write_text("{}")
    pixels = torch.randn(2, 3, 64, 64)
    expected = visual_probabilities(bundle.model, pixels)
    assert expected.shape == (2, 16, 59) and torch.allclose(expected.sum(-1), torch.ones(2, 16))
    for path in (checkpoint, root / "run", root / "export"):  # a run dir without export -> latest checkpoint
        assert torch.allclose(visual_probabilities(load_bundle(path).model, pixels), expected, atol=1e-6)


def test_the_mlp_connector_has_nothing_to_analyse():
    from ovis_train.analyze.probe import visual_probabilities
    from ovis_train.model import ModelConfig, build_model

    model = build_model(ModelConfig(preset="tiny", connector="mlp")).model
    with pytest.raises(ValueError, match="mlp connector"):
        visual_probabilities(model, torch.zeros(1, 3, 64, 64))


def test_the_cli_leaves_gradient_mode_as_it_found_it(tmp_path):
    """main() runs in-process (here, notebooks): a global no-grad switch would break later training."""
    import torch

    from ovis_train.analyze.__main__ import main
    from ovis_train.data import write_synthetic_shards
    from ovis_train.model import ModelConfig, build_model

    build_model(ModelConfig(preset="tiny")).save_pretrained(str(tmp_path / "export"))
    write_synthetic_shards(str(tmp_path / "shards"), n_samples=4, samples_per_shard=4)
    assert main([str(tmp_path / "export"), "--shards", str(tmp_path / "shards" / "synthetic-000000.tar"),
                 "--out", str(tmp_path / "report")]) == 0
    assert torch.is_grad_enabled()
