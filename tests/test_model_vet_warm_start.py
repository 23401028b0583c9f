"""model.vet_init=from:<export>: a K' VET starts from a trained K one (rows split or merged, the visual
head's rows and LayerNorm to match). Tiny preset, CPU."""

import math

import pytest
import torch

from ovis_train.errors import ConfigError
from ovis_train.model import ModelConfig, build_model, load_model
from ovis_train.train.config import compose
from ovis_train.train.loop import train

N_IND = 5  # indicator rows (Ovis2)


def pixels(bundle, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = bundle.model.config.vision_config.image_size
    return torch.randn(3, 3, size, size, generator=g)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A K = 25 (20 visual rows) export whose head, LayerNorm and VET are far from their init."""
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny", visual_vocab_size=N_IND + 20))
    tower = bundle.model.model.vision_tower
    with torch.no_grad():
        tower.head_linear.weight.mul_(30)  # sharp distributions: the rows' split matters
        tower.head_norm.weight.uniform_(0.5, 2.0)
        tower.head_norm.bias.normal_(0, 1)
        bundle.model.model.visual_embeddings_table.weight.normal_(0, 1)
    folder = tmp_path_factory.mktemp("k25") / "export"
    bundle.save_pretrained(str(folder))
    return folder, bundle


def warm(folder, k, **options):
    torch.manual_seed(1)  # another seed: whatever matches the source comes from the export
    return build_model(ModelConfig(preset="tiny", visual_vocab_size=k, vet_init=f"from:{folder}", **options))


def visual_parts(bundle):
    tower, table = bundle.model.model.vision_tower, bundle.model.model.visual_embeddings_table.weight
    return tower.head_linear.weight, tower.head_norm.weight, tower.head_norm.bias, table


def test_a_vet_with_twice_the_rows_computes_the_trained_ones_image_embeddings(trained):
    folder, source = trained
    wide = warm(folder, N_IND + 40)
    # only the head and VET come from the export (the ViT is the build's: a pretrained one in real use)
    wide.model.model.vision_tower.transformer.load_state_dict(source.model.model.vision_tower.transformer.state_dict())
    with torch.no_grad():
        before = source.model.get_image_features(pixels(source))
        after = wide.model.get_image_features(pixels(source))
    assert after.pooler_output.shape == before.pooler_output.shape
    torch.testing.assert_close(after.pooler_output, before.pooler_output, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after.visual_indicator_features, before.visual_indicator_features)
    # the rest of the model is the fresh build's (seed 1), not the export's
    assert not torch.equal(wide.model.lm_head.weight, source.model.lm_head.weight)


def test_split_rows_copy_old_row_j_mod_k_and_share_its_probability(trained):
    folder, source = trained
    head, gamma, beta, table = visual_parts(source)
    new_head, new_gamma, new_beta, new_table = visual_parts(warm(folder, N_IND + 30))  # 30 rows from 20
    rows = torch.arange(30) % 20
    assert torch.equal(new_head, head[rows]) and torch.equal(new_gamma, gamma[rows])
    copies = torch.where(rows < 10, 2.0, 1.0)  # rows 0-9 appear twice, 10-19 once
    torch.testing.assert_close(new_beta, beta[rows] - copies.log())
    assert torch.equal(new_table[:30], table[rows]) and torch.equal(new_table[30:], table[20:])


def test_merged_rows_are_the_mean_of_old_rows_i_mod_k_with_their_summed_probability(trained):
    folder, source = trained
    head, gamma, beta, table = visual_parts(source)
    new_head, new_gamma, new_beta, new_table = visual_parts(warm(folder, N_IND + 10))  # 10 rows from 20
    torch.testing.assert_close(new_head, (head[:10] + head[10:20]) / 2)
    torch.testing.assert_close(new_gamma, (gamma[:10] + gamma[10:20]) / 2)
    torch.testing.assert_close(new_beta, (beta[:10] + beta[10:20]) / 2 + math.log(2))
    torch.testing.assert_close(new_table[:10], (table[:10] + table[10:20]) / 2)
    assert torch.equal(new_table[10:], table[20:])  # indicator rows as trained


def test_exports_that_do_not_fit_are_refused_with_the_reason(trained, tmp_path):
    folder, _ = trained
    with pytest.raises(ConfigError, match=r"visual head input width .* 128 here 32"):
        warm(folder, N_IND + 40, hidden_stride=1)  # 4x fewer merged features per visual token
    with pytest.raises(ConfigError, match="not an export folder"):
        warm(tmp_path / "nowhere", N_IND + 40)
    with pytest.raises(ConfigError, match="no model.vision_tower.head_linear.weight there"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        warm(tmp_path / "empty", N_IND + 40)
    mlp = tmp_path / "mlp"
    build_model(ModelConfig(preset="tiny", connector="mlp")).save_pretrained(str(mlp))
    with pytest.raises(ConfigError, match="has no visual vocabulary"):
        warm(mlp, N_IND + 40)
    with pytest.raises(ConfigError, match="needs model.connector=vet"):
        warm(folder, N_IND + 40, connector="mlp")


def test_a_warm_started_phase_trains_and_exports_the_new_size(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path / "cache"))
    folder, _ = trained
    run_dir = train(compose(["model=tiny", "data=synthetic", "logger=none", "data.batch_size=2",
                             "trainer.max_steps=2", "model.visual_vocab_size=45", f"model.vet_init=from:{folder}",
                             f"run_dir={tmp_path / 'run'}"]))
    exported = load_model(str(run_dir / "export"))
    assert exported.model.config.vision_config.vocab_size == 45
    assert exported.config.vet_init == f"from:{folder}"  # the export records where its VET came from
