"""Freeze rules on a hand-made module (no model package needed): first match wins, everything checked."""

import pytest
import torch
from torch import nn

from ovis_train.train.errors import ConfigError
from ovis_train.train.freeze import FreezeRule, LoraSpec, resolve_freeze


class Toy(nn.Module):
    """vit (3 blocks) -> visual head -> vet; llm with an lm_head tied to its input embedding."""

    def __init__(self):
        super().__init__()
        self.vit = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 6, bias=False)
        self.vet = nn.Embedding(8, 4)
        self.embed = nn.Embedding(10, 4)
        self.layer = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight  # tied


def components(model):
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    comps = {f"vit.blocks.{i}": [n for n in names if n.startswith(f"vit.{i}.")] for i in range(3)}
    comps["vit"] = [n for n in names if n.startswith("vit.")]
    comps["visual_head"] = ["head.weight"]
    comps["vet"] = ["vet.weight"]
    comps["llm"] = ["embed.weight", "layer.weight", "layer.bias"]
    comps["lm_head"] = ["lm_head.weight"]
    return comps


P1 = [
    FreezeRule("vit.blocks.-1", trainable=True, lr=1e-3),
    FreezeRule("vit", trainable=False),
    FreezeRule("visual_head", trainable=True),
    FreezeRule("vet", trainable=True, lr=2e-4, weight_decay=0.1),
    FreezeRule("lm_head", trainable=False),
    FreezeRule("llm", trainable=False),
]


def resolve(rules, model=None):
    model = model or Toy()
    return model, resolve_freeze(model, rules, components(model), default_lr=1e-4, default_weight_decay=0.0)


def test_p1_rules_first_match_wins_and_settings_are_applied():
    model, plan = resolve(P1)
    plan.apply()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vit.2.weight", "vit.2.bias", "head.weight", "vet.weight"}
    groups = {g["name"]: g for g in plan.optimizer_groups()}
    assert set(groups) == {"vit.blocks.-1", "visual_head", "vet"}
    assert groups["vit.blocks.-1"]["lr"] == 1e-3 and groups["visual_head"]["lr"] == 1e-4
    assert groups["vet"]["lr"] == 2e-4 and groups["vet"]["weight_decay"] == 0.1
    assert "visual_head" in plan.table and "total" in plan.table


def test_tied_tensor_is_one_tensor_claimed_by_the_first_rule_naming_it():
    rules = [FreezeRule("lm_head", trainable=True), FreezeRule("re:.*", trainable=False)]
    model, plan = resolve(rules)
    plan.apply()
    assert model.embed.weight.requires_grad  # reached through its other name
    (group,) = plan.optimizer_groups()
    assert len(group["params"]) == 1
    total = plan.table.splitlines()
    assert any(line.startswith("total") and f"{10 * 4:,}" in line for line in total)


@pytest.mark.parametrize(
    "rules, message",
    [
        ([FreezeRule("vit.blocks.-4", trainable=True), FreezeRule("re:.*")], "no such component"),
        ([FreezeRule("visual_tokenizer", trainable=True), FreezeRule("re:.*")], "no such component"),
        ([FreezeRule("re:nothing\\..*", trainable=True), FreezeRule("re:.*")], "matches no parameter"),
        (P1[:-1], "claimed by no freeze rule"),
        ([FreezeRule("vit", trainable=False), FreezeRule("vit.blocks.-1", trainable=True), FreezeRule("re:.*")],
         "never applies"),
        ([FreezeRule("vit", trainable=False, lr=1.0), FreezeRule("re:.*")], "is frozen but sets lr"),
        ([FreezeRule("re:(", trainable=True)], "invalid regex"),
        ([FreezeRule("llm", lora=LoraSpec(targets=["layer"])), FreezeRule("re:.*")], "the model has no adapters"),
        # tied lm_head / input embedding: rules naming the tensor by its two names must agree
        ([FreezeRule("lm_head", trainable=True), FreezeRule("llm", trainable=False), FreezeRule("re:.*")],
         "one tensor \\(tied\\): freeze rule #1 'lm_head' trains it, which would silently move what rule #2"),
        ([FreezeRule("lm_head", trainable=False), FreezeRule("llm", trainable=True), FreezeRule("re:.*")],
         "freezes it, which would silently freeze what rule #2 'llm' trains"),
        ([], "no freeze rules"),
    ],
)
def test_rule_mistakes_are_one_line_errors(rules, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve(rules)
    assert "\n" not in str(err.value)


def test_regex_is_a_full_match_on_parameter_names():
    rules = [FreezeRule("re:layer\\.bias", trainable=True), FreezeRule("re:.*", trainable=False)]
    model, plan = resolve(rules)
    plan.apply()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["layer.bias"]
    with pytest.raises(ConfigError, match="matches no parameter"):
        resolve([FreezeRule("re:layer", trainable=True), FreezeRule("re:.*")])


def test_frozen_parameters_get_no_weight_gradient():
    model, plan = resolve(P1)
    plan.apply()
    x = model.vet(torch.tensor([1, 2])) + model.embed(torch.tensor([3, 4]))
    model.layer(model.head(model.vit[2](x))[:, :4]).sum().backward()
    assert model.layer.weight.grad is None and model.embed.weight.grad is None
    assert model.head.weight.grad is not None and model.vet.weight.grad is not None
