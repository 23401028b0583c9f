"""The step loss is per supervised token over the whole accumulated batch, not a mean of micro-batch means."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from ovis_train.train.loop import train_step


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(10, 8), nn.Linear(8, 10)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=None, use_cache=None):
        hidden = self.embed(input_ids)
        return SimpleNamespace(logits=self.head(hidden if logits_to_keep is None else hidden[:, logits_to_keep]))


def batch(ids, labels):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(labels)}


# 5 supervised tokens in the first micro-batch, 2 in the second: a mean of means would weigh them 1:1
MICRO_BATCHES = [
    batch([[1, 2, 3, 4, 5, 6]], [[-100, 2, 3, 4, 5, 6]]),
    batch([[7, 8, 9], [3, 1, 4]], [[-100, -100, 9], [-100, 1, -100]]),
]


def reference_loss(model, micro_batches):
    logits = [model(b["input_ids"]).logits[:, :-1] for b in micro_batches]
    targets = [b["labels"][:, 1:] for b in micro_batches]
    sums = [F.cross_entropy(lg.flatten(0, 1), t.flatten(), reduction="sum") for lg, t in zip(logits, targets)]
    return sum(sums) / sum(int((t != -100).sum()) for t in targets)


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True, gradient_accumulation_steps=2, step_scheduler_with_optimizer=False)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_accumulated_step_equals_one_step_on_the_whole_batch(accelerator):
    model, reference = TinyLM(), TinyLM()
    expected = reference_loss(reference, MICRO_BATCHES)
    expected.backward()
    optimizer = torch.optim.SGD([{"name": "all", "params": list(model.parameters())}], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    start = copy.deepcopy(model.state_dict())
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    loss, grad_norm, seen, applied = train_step(accelerator, prepared, optimizer, scheduler,
                                                list(model.parameters()), MICRO_BATCHES, clip=None)

    assert applied and loss == pytest.approx(expected.item(), rel=1e-6)
    assert seen.supervised_tokens == 7 and seen.samples == 3 and seen.tokens == 12
    for name, param in reference.named_parameters():
        torch.testing.assert_close(model.state_dict()[name], start[name] - param.grad, rtol=1e-5, atol=1e-6)
    assert grad_norm == pytest.approx(torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item(),
                                      rel=1e-5)
