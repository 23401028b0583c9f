"""Sweep plots: loss curves overlaid, and the held-out numbers against K (or per member when K does
not vary, e.g. the vet / mlp ablation). ``matplotlib.figure.Figure`` (Agg), never pyplot."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .collect import Member


def _short(label: str, width: int = 40) -> str:
    return label if len(label) <= width else label[: width - 3] + "..."


def loss_curves(members: list[Member], labels: dict[str, str], path: Path) -> Path:
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for index, m in enumerate(members):
        colour = f"C{index % 10}"
        steps, loss = m.curves.get("loss", ([], []))
        ax.plot(steps, loss, color=colour, label=_short(labels[m.name]))
        steps, loss = m.curves.get("eval/loss", ([], []))
        if steps:
            ax.plot(steps, loss, color=colour, linestyle="--", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (solid: train, dashed: held-out)")
    ax.set_title("loss curves")
    if members:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def heldout_vs_k(members: list[Member], labels: dict[str, str], path: Path, groups=None) -> Path:
    """Held-out accuracy and loss against K when members differ in K, else one bar per member; with
    seed ``groups`` (seeds.py), one bar per group: the mean, with the std as error bar."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    by_k = len({m.visual_vocab_size for m in members if m.visual_vocab_size}) > 1
    panels = (("eval_caption_accuracy", "held-out caption accuracy"), ("eval_loss", "held-out loss"))
    if groups is not None:
        for ax, (column, name) in zip(axes, panels):
            stats = [(g, g.stats(column)) for g in groups if g.stats(column) is not None]
            ax.bar(range(len(stats)), [s[0] for _, s in stats], yerr=[s[1] or 0 for _, s in stats], capsize=4,
                   color=[f"C{i % 10}" for i in range(len(stats))])
            ax.set_xticks(range(len(stats)), [_short(g.label or "all") for g, _ in stats], rotation=20, ha="right",
                          fontsize=7)
            ax.set_title(f"{name} (mean ± std over seeds)")
            if not stats:
                ax.set_axis_off()
        fig.savefig(path, dpi=100)
        return path
    for ax, (column, name) in zip(axes, panels):
        points = [(m, m.values[column]) for m in members if m.values.get(column) is not None]
        if by_k:
            groups: dict[str, list] = {}  # one line per connector: the mlp members have no K
            for m, value in points:
                if m.visual_vocab_size:
                    groups.setdefault(m.connector or "vet", []).append((m.visual_vocab_size, value))
            for connector, xy in groups.items():
                xy.sort()
                ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=connector)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("K (visual vocabulary size)")
        else:
            ax.bar(range(len(points)), [v for _, v in points], color=[f"C{i % 10}" for i in range(len(points))])
            ticks = [_short(labels[m.name]) for m, _ in points]
            ax.set_xticks(range(len(points)), ticks, rotation=20, ha="right", fontsize=7)
        ax.set_title(name)
        if not points:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "not logged by the members", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=100)
    return path
