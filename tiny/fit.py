"""The loop both tiny-model pretrainers share: AdamW, linear warm-up, gradient clipping.

It runs once per model recipe, in-process; the RL learner's updates go through DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm


def fit(params: Iterable[torch.nn.Parameter], next_loss: Callable[[], torch.Tensor], *,
        steps: int, lr: float, warmup_steps: int, desc: str, progress: bool = True,
        clip: Iterable[torch.nn.Parameter] | None = None, max_grad_norm: float = 1.0) -> list[float]:
    """`next_loss()` draws a batch and returns its loss; `clip`: the parameters whose
    gradient norm is clipped (default: all). Returns the loss of every step."""
    params = list(params)
    clip = params if clip is None else list(clip)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        loss = next_loss()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip, max_grad_norm)
        opt.step()
        warmup.step()
        losses.append(loss.item())
    return losses
