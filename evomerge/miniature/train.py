"""A small causal-LM training loop in plain torch, and the two ways the miniature batches its data.

Determinism: the batch order comes from a `torch.Generator` seeded by `TrainConfig.seed`, and the data are
built in full before training, so the same inputs and seed give the same weights on the same machine
(the thread count is the caller's business: `torch.set_num_threads` changes summation order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# What a data-parallel run does with each step's flat gradient (its loss appended): sum it over the ranks in place.
AllReduce = Callable[["torch.Tensor"], None]

IGNORE_INDEX = -100  # label value the Hugging Face causal-LM loss skips


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and schedule of one training run: AdamW, linear warm-up, cosine decay to `min_lr_ratio`."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate at `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)


def pack_documents(docs: list[list[int]], block_size: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """Concatenate "<bos> doc <eos>" for every doc and cut the stream into full blocks: [n_blocks, block_size].

    Packing wastes no compute on padding; blocks that start mid-document teach the model text without <bos>.
    The incomplete tail is dropped.
    """
    import torch

    stream = [t for doc in docs for t in (bos_id, *doc, eos_id)]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens do not fill one block of {block_size}")
    return torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def pad_examples(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (prompt, completion) id pairs; labels cover only the completion: ([n, T], [n, T]).

    Right padding needs no attention mask: causal attention never lets a real token see a later pad.
    """
    import torch

    length = max(len(p) + len(c) for p, c in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, completion) in enumerate(examples):
        ids = prompt + completion
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, len(prompt) : len(ids)] = torch.tensor(completion)
    return input_ids, labels


def train_causal_lm(
    model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor | None, config: TrainConfig, *,
    shards: int = 1, rank: int | None = None, all_reduce: AllReduce | None = None,
) -> list[float]:
    """Train `model` in place on rows of `input_ids` [n, T] (labels [n, T], or the inputs when None).

    Batches are drawn epoch by epoch from seeded permutations of the rows. Returns the loss of every step.

    With `shards` > 1 each batch is cut into that many slices (rows `s::shards`) whose gradients are computed apart
    and averaged: data parallelism. One process computes every slice in turn (`rank` None), or a process of a
    data-parallel run computes only slice `rank` and `all_reduce` sums the flat gradients of all ranks. The two give
    the same weights bit for bit: each slice's gradient is the same computation, and a float sum of two values does
    not depend on their order (tests/test_miniature.py checks two ranks). Every row must carry the same number of labels
    (packed pre-training blocks do) for the average of the slices' mean losses to be the batch's mean loss.
    """
    import torch

    if labels is None:
        labels = input_ids
    if input_ids.shape != labels.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} differ")
    n = input_ids.shape[0]
    generator = torch.Generator().manual_seed(config.seed)
    # Weight decay on matrices only (the usual choice); norms' gains stay free.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    for step in range(config.steps):
        if len(order) < config.batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        batch, order = order[: config.batch_size], order[config.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        if shards == 1:
            loss = model(input_ids=input_ids[batch], labels=labels[batch]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = loss.item()
        else:
            loss_value = _sharded_step(model, input_ids, labels, batch, shards, rank, all_reduce)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss_value)
    model.eval()
    return losses


def _slice_gradient(model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
    """The flat gradient of the mean loss over `rows`, with that loss appended: [n_params + 1]."""
    import torch

    model.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids[rows], labels=labels[rows]).loss
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()] + [loss.detach().reshape(1)])


def _sharded_step(model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor, batch: torch.Tensor,
                  shards: int, rank: int | None, all_reduce: AllReduce | None) -> float:
    """Set every parameter's gradient to the mean of the slices' gradients; return the mean of their losses."""
    if rank is None:  # every slice here, summed in rank order
        flat = _slice_gradient(model, input_ids, labels, batch[0::shards])
        for s in range(1, shards):
            flat += _slice_gradient(model, input_ids, labels, batch[s::shards])
    else:
        if all_reduce is None:
            raise ValueError("a rank of a data-parallel run needs all_reduce")
        flat = _slice_gradient(model, input_ids, labels, batch[rank::shards])
        all_reduce(flat)
    flat /= shards
    offset = 0
    for p in model.parameters():  # views of `flat`, a fresh tensor every step: nothing copied
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat[-1].item()
