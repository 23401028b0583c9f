"""model.tokenize_function=gelu, the softmax ablation: the same head, LayerNorm and width-K table as the
VET with GELU in place of the softmax. Tiny preset, CPU."""

import json
import math

import torch
from torch import nn

from ovis_train.model import ModelConfig, build_model, load_model, model_components
from ovis_train.model.chunked_visual import merge_hidden_stride
from ovis_train.train.config import compose
from ovis_train.train.loop import train
from ovis_train.run import RunDir

K = 64


def seeded(**options):
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny", visual_vocab_size=K, **options))


def images(bundle):
    size = bundle.model.config.vision_config.image_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_gelu_replaces_only_the_softmax_with_the_same_parameters():
    softmax, gelu = seeded(), seeded(tokenize_function="gelu")
    for key in ("visual_head", "vet"):  # same tensors, same shapes, same (seeded) values
        params_s, params_g = dict(softmax.model.named_parameters()), dict(gelu.model.named_parameters())
        names = model_components(gelu.model)[key]
        assert names == model_components(softmax.model)[key]
        assert all(torch.equal(params_s[n], params_g[n]) for n in names)
    assert gelu.model.num_parameters() == softmax.model.num_parameters()
    tower, table = gelu.model.model.vision_tower, gelu.model.model.visual_embeddings_table.weight
    pixels = images(gelu)
    with torch.no_grad():
        merged = merge_hidden_stride(tower.transformer(pixels)[0], tower.config.hidden_stride)
        hidden = tower.head_norm(tower.head_linear(merged))
        by_hand = nn.functional.pad(nn.functional.gelu(hidden), (0, 5)) @ table
        by_softmax = nn.functional.pad(hidden.softmax(-1), (0, 5)) @ table
        got = gelu.model.get_image_features(pixels).pooler_output
        torch.testing.assert_close(got, by_hand)
        torch.testing.assert_close(softmax.model.get_image_features(pixels).pooler_output, by_softmax)
    assert not torch.allclose(got, by_softmax, atol=1e-3)


def test_a_gelu_model_exports_and_loads_with_the_same_outputs(tmp_path):
    gelu = seeded(tokenize_function="gelu")
    gelu.save_pretrained(str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / "config.json").read_text())["vision_config"]["tokenize_function"] == "gelu"
    loaded = load_model(str(tmp_path / "export"))
    pixels = images(gelu)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.get_image_features(pixels).pooler_output,
                                   gelu.model.get_image_features(pixels).pooler_output)


def test_a_gelu_phase_trains_the_head_and_table_and_logs_vet_health(tmp_path, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path / "cache"))
    before = seeded(tokenize_function="gelu").model.state_dict()
    run_dir = train(compose(["model=tiny", "data=synthetic", "logger=none", "data.batch_size=2", "trainer.max_steps=2",
                             "trainer.lr=1e-2", "trainer.vet_health_every=1", f"model.visual_vocab_size={K}",
                             "model.tokenize_function=gelu", f"run_dir={tmp_path / 'run'}"]))
    after = load_model(str(run_dir / "export")).model.state_dict()
    for name in ("model.vision_tower.head_linear.weight", "model.visual_embeddings_table.weight"):
        assert not torch.equal(after[name], before[name]), name
    health = [row for row in RunDir(run_dir).read_metrics() if "vet/entropy" in row]
    assert len(health) == 2
    # entropy of the normalised positive GELU weights: a real number between 0 and ln(K - 5)
    assert all(0 < row["vet/entropy"] <= math.log(K - 5) + 1e-6 for row in health)
    assert all(0 < row["vet/rows_top1"] <= 1 for row in health)
