"""Freeze masks: ordered rules decide, per tensor, whether it trains and with which lr / weight decay.

A rule names a model component (``vit``, ``vit.blocks.-1``, ``visual_head``, ``vet``, ``llm``,
``lm_head``; see ``ovis_train.model.model_components``) or ``re:<regex>`` (full match on a parameter
name). For every tensor the first rule matching any of its names wins; tied weights (the LLM's input
embedding and ``lm_head``) are one tensor with several names, so they are grouped by identity.
Everything is checked: a rule matching no parameter, a parameter no rule claims, and a rule that is
entirely overridden by earlier rules with different settings are errors, not silent leaks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from ovis_train.train.errors import ConfigError

REGEX_PREFIX = "re:"


@dataclass
class FreezeRule:
    match: str = ""  # component name (negative block index allowed) or "re:<regex>"
    trainable: bool = False
    lr: float | None = None  # None: trainer.lr
    weight_decay: float | None = None  # None: trainer.weight_decay


@dataclass
class ParamGroup:
    """The tensors one rule won; trainable groups become one optimizer param group each."""

    name: str
    trainable: bool
    lr: float
    weight_decay: float
    params: list[nn.Parameter] = field(default_factory=list)

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class FreezePlan:
    groups: list[ParamGroup]
    table: str  # per-component trainable / frozen counts, printed at start

    @property
    def trainable_groups(self) -> list[ParamGroup]:
        return [g for g in self.groups if g.trainable and g.params]

    def apply(self) -> None:
        """Set requires_grad so frozen tensors never get weight gradients (not just zero lr)."""
        for group in self.groups:
            for p in group.params:
                p.requires_grad_(group.trainable)

    def optimizer_groups(self) -> list[dict]:
        return [
            {"name": g.name, "params": g.params, "lr": g.lr, "weight_decay": g.weight_decay}
            for g in self.trainable_groups
        ]


def resolve_freeze(
    model: nn.Module,
    rules: Sequence[FreezeRule],
    components: Mapping[str, list[str]],
    default_lr: float,
    default_weight_decay: float,
) -> FreezePlan:
    """Resolve ``rules`` against ``model``; raises ConfigError on any rule/parameter mismatch."""
    if not rules:
        raise ConfigError("the phase has no freeze rules; list at least one under phase.rules")
    tensors = _tensors_by_identity(model)
    all_names = {n for _, names in tensors.values() for n in names}
    rule_names = [_names_matched(i, rule, components, all_names) for i, rule in enumerate(rules)]
    settings = [_settings(i, rule, default_lr, default_weight_decay) for i, rule in enumerate(rules)]

    groups = [ParamGroup(_group_name(i, rule), *settings[i]) for i, rule in enumerate(rules)]
    unclaimed = []
    for param, names in tensors.values():
        winner = next((i for i, matched in enumerate(rule_names) if matched & names), None)
        if winner is None:
            unclaimed.append(min(names))
        else:
            groups[winner].params.append(param)
    if unclaimed:
        shown = ", ".join(unclaimed[:3]) + (", ..." if len(unclaimed) > 3 else "")
        raise ConfigError(
            f"{len(unclaimed)} parameter tensors are claimed by no freeze rule ({shown}); "
            "add a rule for them, e.g. a last rule {match: 're:.*', trainable: false}"
        )
    _check_no_overridden_rule(rules, rule_names, settings, groups, tensors)
    return FreezePlan(groups=groups, table=_component_table(tensors, groups, components))


def _tensors_by_identity(model: nn.Module) -> dict[int, tuple[nn.Parameter, set[str]]]:
    tensors: dict[int, tuple[nn.Parameter, set[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tensors.setdefault(id(param), (param, set()))[1].add(name)
    return tensors


def _names_matched(index: int, rule: FreezeRule, components, all_names: set[str]) -> set[str]:
    where = f"freeze rule #{index + 1} {rule.match!r}"
    if rule.match.startswith(REGEX_PREFIX):
        try:
            pattern = re.compile(rule.match[len(REGEX_PREFIX):])
        except re.error as e:
            raise ConfigError(f"{where}: invalid regex ({e}); fix the pattern after 're:'") from None
        matched = {n for n in all_names if pattern.fullmatch(n)}
    else:
        matched = set(_component(rule.match, components, where)) & all_names
    if not matched:
        raise ConfigError(f"{where} matches no parameter of this model; remove it or fix the name")
    return matched


def _component(match: str, components: Mapping[str, list[str]], where: str) -> list[str]:
    if match in components:
        return components[match]
    negative = re.fullmatch(r"(.+)\.(-\d+)", match)  # "vit.blocks.-1": count from the end
    if negative:
        prefix, index = negative.group(1), int(negative.group(2))
        indexed = sorted(int(k[len(prefix) + 1:]) for k in components if re.fullmatch(re.escape(prefix) + r"\.\d+", k))
        if -len(indexed) <= index:
            return components[f"{prefix}.{indexed[index]}"]
    raise ConfigError(
        f"{where}: no such component (known: {', '.join(_summarize_components(components))}); "
        "use one of those or 're:<regex>' on parameter names"
    )


def _summarize_components(components: Mapping[str, list[str]]) -> list[str]:
    """'vit.blocks.0', ..., 'vit.blocks.11' -> 'vit.blocks.<0..11 or -1..-12>' for error messages."""
    out, indexed = [], {}
    for key in components:
        m = re.fullmatch(r"(.+)\.(\d+)", key)
        if m:
            if m.group(1) not in indexed:
                out.append(m.group(1))
            indexed.setdefault(m.group(1), []).append(int(m.group(2)))
        else:
            out.append(key)
    return [f"{k}.<0..{max(indexed[k])} or -1..-{len(indexed[k])}>" if k in indexed else k for k in out]


def _settings(index: int, rule: FreezeRule, default_lr: float, default_wd: float) -> tuple[bool, float, float]:
    if not rule.trainable:
        if rule.lr is not None or rule.weight_decay is not None:
            raise ConfigError(
                f"freeze rule #{index + 1} {rule.match!r} is frozen but sets lr/weight_decay; "
                "drop them or set trainable: true"
            )
        return False, 0.0, 0.0
    lr = default_lr if rule.lr is None else rule.lr
    wd = default_wd if rule.weight_decay is None else rule.weight_decay
    return True, float(lr), float(wd)


def _group_name(index: int, rule: FreezeRule) -> str:
    return rule.match if not rule.match.startswith(REGEX_PREFIX) else f"rule{index + 1}"


def _check_no_overridden_rule(rules, rule_names, settings, groups, tensors) -> None:
    """A rule that wins no tensor is fine only if the rules that won its tensors agree with it."""
    winner_of = {n: g for g in groups for p in g.params for n in tensors[id(p)][1]}
    for i, (rule, names) in enumerate(zip(rules, rule_names)):
        if groups[i].params:
            continue
        for name in sorted(names):
            other = winner_of[name]
            if (other.trainable, other.lr, other.weight_decay) != settings[i]:
                j = groups.index(other)
                raise ConfigError(
                    f"freeze rule #{i + 1} {rule.match!r} never applies: rule #{j + 1} {rules[j].match!r} "
                    f"claims {name} (and the rest) first with different settings; move #{i + 1} above #{j + 1}"
                )


def _component_table(tensors, groups: list[ParamGroup], components: Mapping[str, list[str]]) -> str:
    trainable = {id(p) for g in groups if g.trainable for p in g.params}
    rows = [k for k in components if not re.fullmatch(r".+\.\d+", k)]  # blocks are summed into their tower
    in_any = set()
    lines = [f"{'component':<14}{'trainable':>14}{'frozen':>14}"]

    def row(label: str, ids: set[int]) -> None:
        n_train = sum(tensors[t][0].numel() for t in ids if t in trainable)
        n_frozen = sum(tensors[t][0].numel() for t in ids if t not in trainable)
        lines.append(f"{label:<14}{n_train:>14,}{n_frozen:>14,}")

    for key in rows:
        names = set(components[key])
        ids = {t for t, (_, tnames) in tensors.items() if tnames & names}
        in_any |= ids
        row(key, ids)
    others = set(tensors) - in_any
    if others:
        row("(other)", others)
    row("total", set(tensors))  # each tied tensor once
    for g in groups:
        if g.params:
            how = f"lr {g.lr:g}, wd {g.weight_decay:g}" if g.trainable else "frozen"
            lines.append(f"  rule {g.name}: {len(g.params)} tensors, {g.numel():,} params, {how}")
    return "\n".join(lines)
