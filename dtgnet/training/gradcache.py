"""Exact large-batch contrast on small memory: GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup").

Gradient accumulation does not reproduce a contrastive batch: each micro-batch only sees its own negatives.
GradCache does, in three passes:

1. the backbone embeds each micro-batch of ``m`` videos without gradients (the activations of one
   micro-batch at a time);
2. the heads and the loss run on the whole batch's features, made a leaf: the heads' parameter gradients,
   and ``g = dL / d features`` (cheap: the heads are small);
3. the backbone embeds each micro-batch again, with gradients, and back-propagates its rows of ``g``.

By the chain rule the parameter gradients equal the whole batch's whenever a video's backbone features
depend on that video alone: backbones without batch statistics (the ViTs: LayerNorm). The projection heads'
batch norm sees the whole batch in pass 2, as without micro-batches. A BatchNorm backbone (the CNNs)
normalises each micro-batch by its own statistics in passes 1 and 3, as gradient accumulation would
(docs/TRAINING.md measures the difference); its running statistics move once per micro-batch (pass 3).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def cached_backward(embed: Callable[..., Tensor], loss_of: Callable[[Tensor], Tensor],
                    inputs: tuple[Tensor | None, ...], micro: int, module: torch.nn.Module) -> Tensor:
    """Back-propagate ``loss_of(embed(*inputs))`` into the parameters, the backbone in micro-batches of
    ``micro`` videos; returns the (detached) loss.

    Args:
        embed: ``(*inputs) -> (V, B, ...)`` backbone features of the views (batch on dimension 1).
        loss_of: ``(V, B, ...) features -> scalar loss`` over the whole batch (the heads and the objective).
        inputs: ``(B, ...)`` tensors sliced together into micro-batches (the views, the visible tokens; None
            stays None).
        module: whose buffers (batch-norm running statistics) pass 1 must leave as it found them.
    """
    chunks = [slice(i, i + micro) for i in range(0, inputs[0].shape[0], micro)]
    part = lambda sl: [None if x is None else x[sl] for x in inputs]  # noqa: E731
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    states, parts = [], []
    with torch.no_grad():  # pass 1: features only
        for sl in chunks:
            states.append(_rng_state())  # pass 3 replays each micro-batch's random draws
            parts.append(embed(*part(sl)))
        for k, v in module.named_buffers():
            v.copy_(buffers[k])
    features = torch.cat(parts, 1).requires_grad_()  # (V, B, ...)
    loss = loss_of(features)  # pass 2: the whole batch's heads and loss
    loss.backward()
    after = _rng_state()  # where the step leaves the generator: past every draw it made once
    cached = features.grad  # (V, B, ...)
    for n, sl in enumerate(chunks):  # pass 3: the backbone again, with the cached gradients of its rows
        _set_rng_state(states[n])
        embed(*part(sl)).backward(cached[:, sl])
    _set_rng_state(after)
    return loss.detach()
