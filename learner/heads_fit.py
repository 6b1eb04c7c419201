"""Fitting the SQR heads after SFT: a regression of each not-matched turn's soft tokens onto the
embedder's inputs of the query words the shown video lacks, on the SFT policy's slot states.

Why a stage of its own: SFT gives the heads a few hundred InfoNCE rows, and through the frozen
embedder that signal is weak; the heads it leaves emit one refinement for every query, while the
slot states carry what the shown video lacks and a refinement that names those words ranks the
ground truth well above taking the next result (docs/experiments.md, "The refinement target").
With the policy frozen, the slot states are computed once and the heads take thousands of cheap
steps. They start afresh: from SFT's heads the same fit learns several times slower.
Plain torch; learner.learner.Learner.fit_heads feeds it and writes the result back.
"""

from __future__ import annotations

import torch

from learner.losses import refinement_target_error
from models.sqr_heads import SQRHeads


def target_error(heads: SQRHeads, states: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean relative error of the heads' slot inputs (1: as far as emitting zeros)."""
    with torch.no_grad():
        return float(refinement_target_error(heads.to_embedder(heads.soft_tokens(states)),
                                             targets).mean())


def fit_heads(cfg, states: torch.Tensor, targets: torch.Tensor, steps: int, lr: float,
              batch_size: int, seed: int, val: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[SQRHeads, dict]:
    """Fresh heads of `cfg` (an SQRHeadsConfig) fit by Adam on [R, N, H] slot states -> [R, N,
    D_emb] targets, minibatches drawn with `seed`. Returns (heads, {steps, train_error, and
    val_error when `val` has rows, each [before, after]})."""
    if not len(states):
        raise ValueError("the heads fit needs at least one not-matched turn with a target")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = SQRHeads(cfg).to(states.device)
    sets = {"train_error": (states, targets)} | ({"val_error": val} if val and len(val[0]) else {})
    before = {k: target_error(heads, *v) for k, v in sets.items()}
    # Standardised inputs (each feature over the turns and slots): the final hidden states'
    # features differ in scale by orders of magnitude, and raw ones fit several times worse.
    # The first layer then absorbs the standardisation, so the heads read raw states.
    mean, std = states.mean((0, 1)), states.std((0, 1)).clamp(min=1e-6)
    standard = (states - mean) / std
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    for _ in range(steps):
        pick = torch.randint(len(states), (min(batch_size, len(states)),), generator=generator)
        soft = heads.to_embedder(heads.soft_tokens(standard[pick]))
        loss = refinement_target_error(soft, targets[pick]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    first = heads.refine_projector[0]
    with torch.no_grad():
        first.weight.div_(std)
        first.bias.sub_(first.weight @ mean)
    return heads, {"steps": steps} | {k: [before[k], target_error(heads, *v)]
                                      for k, v in sets.items()}
