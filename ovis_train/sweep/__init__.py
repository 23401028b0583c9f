"""Sweeps: a Hydra multirun (one run directory per member, named by the swept keys) and its summary.

    python -m ovis_train -m phase=p1 model=tiny model.visual_vocab_size=1024,4096 run_dir=runs/k-sweep
    python -m ovis_train.sweep.summarize runs/k-sweep          # (the callback already did it)

Modules: naming (member folder names, the sweep's recorded overrides), multirun (what ``-m`` changes
in the trainer's CLI: the refusal inside a launch, held-out defaults, exit status), record (a member's
overrides and status, sweep_member.json), collect (a member's final numbers from its run directory),
table (summary.csv / summary.md), seeds (mean +- std over seeds), plots (loss curves, held-out numbers
against K or per group), summarize (all of it, and the CLI), callback (the Hydra callback), launch (one
launch per member, resumable).
"""
