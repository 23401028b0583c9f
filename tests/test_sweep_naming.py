"""Sweep member folder names: the swept keys only, one safe path segment, different for different values."""

import re

from ovis_train.sweep.naming import MAX_NAME, expand_members, member_name, swept_keys_of

SAFE = re.compile(r"[A-Za-z0-9._+=,-]+")


def names(overrides):
    swept = swept_keys_of(overrides)
    return [member_name(member, swept, num) for num, member in enumerate(expand_members(overrides))]


def test_names_hold_the_swept_keys_only_whatever_else_the_command_line_holds():
    fixed = ['data.sources=[{urls: "/abs/my data/train-{000000..000001}.tar", weight: 1.0}]',
             'data.eval_urls="/abs/it\'s/heldout.tar"', "run_dir=/abs/sweep", "phase=p1"]
    assert names([*fixed, "model.visual_vocab_size=64,128"]) == ["model.visual_vocab_size=64",
                                                                 "model.visual_vocab_size=128"]
    assert names(["model=tiny,demo", "trainer.seed=range(2)", *fixed]) == [
        "model=tiny,trainer.seed=0", "model=tiny,trainer.seed=1", "model=demo,trainer.seed=0", "model=demo,trainer.seed=1"]
    assert names(["+extra=a,b"]) == ["extra=a", "extra=b"]
    assert names(["trainer.seed=choice(3)"]) == ["trainer.seed=3"]  # choice(): swept even with one value
    assert names(["trainer.max_steps=2"]) == ["member-0"]  # nothing swept


def test_values_that_are_paths_lists_or_long_become_safe_and_stay_apart():
    tricky = ["init_from=/runs/a/export,/runs/a_export,\"/runs/it's here\",[1,2],[1, 2, 3],x" + "y" * 80]
    got = names(tricky)
    assert len(set(got)) == len(got) == 6
    for name in got:
        assert SAFE.fullmatch(name) and "/" not in name and len(name) <= MAX_NAME
    assert got[0].startswith("init_from=runs_a_export-") and got[1].startswith("init_from=runs_a_export-")
    assert got[5].startswith("init_from=xyyy")  # long: cut, with a hash of the whole value
    many = [f"k{i}=" + ",".join(f"{'v' * 30}{j}" for j in range(2)) for i in range(6)]
    assert all(len(name) <= MAX_NAME for name in names(many))
