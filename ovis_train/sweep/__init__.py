"""Sweeps: a Hydra multirun (one run directory per member) and its summary.

    python -m ovis_train -m phase=p1 model=tiny model.visual_vocab_size=1024,4096 run_dir=runs/k-sweep
    python -m ovis_train.sweep.summarize runs/k-sweep          # (the callback already did it)

Modules: record (a member's overrides and end status, sweep_member.json), collect (a member's final
numbers from its run directory), table (summary.csv / summary.md), plots (loss curves, held-out
numbers against K), summarize (all of it, and the CLI), callback (the Hydra callback).
"""
