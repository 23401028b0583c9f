"""Freeze masks: ordered rules decide, per tensor, whether it trains and with which lr / weight decay.

A rule names a model component (``vit``, ``vit.blocks.-1``, ``visual_head``, ``vet``, ``llm``,
``lm_head``; see ``ovis_train.model.model_components``) or ``re:<regex>`` (full match on a parameter
name). For every tensor the first rule matching any of its names wins; tied weights (the LLM's input
embedding and ``lm_head``) are one tensor with several names, so they are grouped by identity.
Everything is checked: a rule matching no parameter, a parameter no rule claims, and a rule that is
entirely overridden by earlier rules with different settings are errors, not silent leaks. So is a
tied tensor that one rule trains while another rule naming it (by its other name) freezes it: a
trainable ``lm_head`` would otherwise move frozen input embeddings.

A rule with ``lora: {r, alpha, dropout, targets}`` (``ovis_train.train.lora``) puts peft adapters on
its component's Linear layers before the rules are resolved: the rule trains the adapters with its lr /
weight decay and freezes the rest of the component (the base). Injection is in place, so the only
renamed tensors are the wrapped layers' weights (``q_proj.weight`` -> ``q_proj.base_layer.weight``);
``re:`` rules also see the old name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from ovis_train.errors import ConfigError

REGEX_PREFIX = "re:"
ADAPTER_MARK = ".lora_"  # in the names of peft's LoRA tensors (lora_A / lora_B)
BASE_LAYER = ".base_layer"  # peft's wrapper keeps the original Linear under this name


@dataclass
class LoraSpec:
    """LoRA adapters on a component's Linear layers (peft): delta W = (alpha / r) * B @ A."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)  # Linear module names (or dotted suffixes), e.g. q_proj
    quantize: str | None = None  # "4bit": QLoRA, the component's frozen Linear weights in 4-bit (CUDA only)


@dataclass
class FreezeRule:
    match: str = ""  # component name (negative block index allowed) or "re:<regex>"
    trainable: bool = False
    lr: float | None = None  # None: trainer.lr
    weight_decay: float | None = None  # None: trainer.weight_decay
    lora: LoraSpec | None = None  # adapters train, the component's own tensors stay frozen


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
    """Resolve ``rules`` against ``model`` (adapters already injected); raises ConfigError on any
    rule/parameter mismatch."""
    if not rules:
        raise ConfigError("the phase has no freeze rules; list at least one under phase.rules")
    tensors = _tensors_by_identity(model)
    all_names = {n for _, names in tensors.values() for n in names}
    rule_names = [_names_matched(i, rule, components, all_names) for i, rule in enumerate(rules)]
    settings = [_settings(i, rule, default_lr, default_weight_decay) for i, rule in enumerate(rules)]

    groups = [ParamGroup(_group_name(i, rule), *settings[i]) for i, rule in enumerate(rules)]
    bases = {i: ParamGroup(f"{groups[i].name} (base)", False, 0.0, 0.0)
             for i, rule in enumerate(rules) if rule.lora is not None}
    unclaimed, winners = [], {}
    for key, (param, names) in tensors.items():
        winner = next((i for i, matched in enumerate(rule_names) if matched & names), None)
        if winner is None:
            unclaimed.append(min(names))
            continue
        winners[key] = winner
        (bases[winner] if winner in bases and not _is_adapter(names) else groups[winner]).params.append(param)
    if unclaimed:
        shown = ", ".join(unclaimed[:3]) + (", ..." if len(unclaimed) > 3 else "")
        raise ConfigError(
            f"{len(unclaimed)} parameter tensors are claimed by no freeze rule ({shown}); "
            "add a rule for them, e.g. a last rule {match: 're:.*', trainable: false}"
        )
    trains = {key: settings[w][0] and (rules[w].lora is None or _is_adapter(tensors[key][1]))
              for key, w in winners.items()}
    _check_adapters(rules, tensors, winners, groups)
    _check_tied(rules, rule_names, tensors, winners, trains)
    _check_no_overridden_rule(rules, rule_names, settings, groups, bases, tensors, winners, trains)
    groups += list(bases.values())
    return FreezePlan(groups=groups, table=_component_table(tensors, groups, components))


def _tensors_by_identity(model: nn.Module) -> dict[int, tuple[nn.Parameter, set[str]]]:
    """id -> (tensor, its names); a LoRA-wrapped layer's weight also answers to its pre-LoRA name."""
    tensors: dict[int, tuple[nn.Parameter, set[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names = tensors.setdefault(id(param), (param, set()))[1]
        names.add(name)
        if BASE_LAYER + "." in name:
            names.add(name.replace(BASE_LAYER + ".", "."))
    return tensors


def _is_adapter(names: set[str]) -> bool:
    return any(ADAPTER_MARK in n for n in names)


def _names_matched(index: int, rule: FreezeRule, components, all_names: set[str]) -> set[str]:
    where = f"freeze rule #{index + 1} {rule.match!r}"
    if rule.match.startswith(REGEX_PREFIX):
        try:
            pattern = re.compile(rule.match[len(REGEX_PREFIX):])
        except re.error as e:
            raise ConfigError(f"{where}: invalid regex ({e}); fix the pattern after 're:'") from None
        matched = {n for n in all_names if pattern.fullmatch(n)}
    else:
        matched = set(component_names(rule.match, components, where)) & all_names
    if not matched:
        raise ConfigError(f"{where} matches no parameter of this model; remove it or fix the name")
    return matched


def component_names(match: str, components: Mapping[str, list[str]], where: str) -> list[str]:
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
    """(trainable, lr, weight decay) of the tensors the rule trains (a LoRA rule's: its adapters)."""
    if rule.lora is not None and rule.trainable:
        raise ConfigError(
            f"freeze rule #{index + 1} {rule.match!r} has lora and trainable: true; a LoRA rule trains its "
            "adapters and freezes the component: drop trainable (or drop lora to train the whole component)"
        )
    if not rule.trainable and rule.lora is None:
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


def _check_adapters(rules, tensors, winners, groups) -> None:
    """LoRA tensors belong to the LoRA rule that made them; an earlier rule claiming them is a mistake."""
    for i, rule in enumerate(rules):
        if rule.lora is not None and not groups[i].params and not any(_is_adapter(n) for _, n in tensors.values()):
            raise ConfigError(
                f"freeze rule #{i + 1} {rule.match!r} asks for LoRA but the model has no adapters; "
                "ovis_train.train.lora.apply_lora(model, cfg) injects them before the rules are resolved"
            )
    for key, w in winners.items():
        names = tensors[key][1]
        if _is_adapter(names) and rules[w].lora is None:
            raise ConfigError(
                f"freeze rule #{w + 1} {rules[w].match!r} claims the LoRA adapter {min(names)} before the LoRA "
                "rule does; move the LoRA rule above it"
            )


def _check_tied(rules, rule_names, tensors, winners, trains) -> None:
    """One tensor under several names (tied embeddings): a rule that reaches it only by another name than
    the winning rule's must agree on training it."""
    for key, (_, names) in tensors.items():
        if len({n.replace(BASE_LAYER + ".", ".") for n in names}) == 1:
            continue  # one name (a LoRA-wrapped weight's two names are one name)
        w = winners[key]
        for i, matched in enumerate(rule_names):
            if i == w or not matched & names or matched & names & rule_names[w]:
                continue  # overlapping rules on one name: first match wins, as everywhere
            wants = rules[i].trainable and rules[i].lora is None
            if wants != trains[key]:
                mine, theirs = sorted(rule_names[w] & names)[0], sorted(matched & names)[0]
                raise ConfigError(
                    f"{mine} and {theirs} are one tensor (tied): freeze rule #{w + 1} {rules[w].match!r} "
                    f"{'trains' if trains[key] else 'freezes'} it, which would silently "
                    f"{'move' if trains[key] else 'freeze'} what rule #{i + 1} {rules[i].match!r} "
                    f"{'freezes' if trains[key] else 'trains'}; give both names the same setting"
                )


def _check_no_overridden_rule(rules, rule_names, settings, groups, bases, tensors, winners, trains) -> None:
    """A rule that wins no tensor is fine only if the rules that won its tensors agree with it."""
    key_of = {n: key for key, (_, names) in tensors.items() for n in names}
    for i, (rule, names) in enumerate(zip(rules, rule_names)):
        if groups[i].params or (i in bases and bases[i].params):
            continue
        for name in sorted(names):
            key = key_of[name]
            j = winners[key]
            theirs = settings[j] if trains[key] else (False, 0.0, 0.0)
            if theirs != settings[i]:
                raise ConfigError(
                    f"freeze rule #{i + 1} {rule.match!r} never applies: rule #{j + 1} {rules[j].match!r} "
                    f"claims {name} (and the rest) first with different settings; move #{i + 1} above #{j + 1}"
                )


def _component_table(tensors, groups: list[ParamGroup], components: Mapping[str, list[str]]) -> str:
    trainable = {id(p) for g in groups if g.trainable for p in g.params}
    adapters = {t for t, (_, names) in tensors.items() if _is_adapter(names)}
    rows = [k for k in components if not re.fullmatch(r".+\.\d+", k)]  # blocks are summed into their tower
    in_any = set()
    header = f"{'component':<14}{'trainable':>14}{'frozen':>14}"
    lines = [header + (f"{'of which LoRA':>16}" if adapters else "")]

    def row(label: str, ids: set[int]) -> None:
        n_train = sum(tensors[t][0].numel() for t in ids if t in trainable)
        n_frozen = sum(tensors[t][0].numel() for t in ids if t not in trainable)
        n_lora = sum(tensors[t][0].numel() for t in ids if t in adapters)
        lines.append(f"{label:<14}{n_train:>14,}{n_frozen:>14,}" + (f"{n_lora:>16,}" if adapters else ""))

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
            lora = " (LoRA adapters)" if g.trainable and any(id(p) in adapters for p in g.params) else ""
            lines.append(f"  rule {g.name}: {len(g.params)} tensors, {g.numel():,} params, {how}{lora}")
    return "\n".join(lines)
