"""Which rows each rank forwards in which micro-step.

One optimizer step consumes micro_batch_size x grad_accum_steps x world rows (a mini-batch);
a longer batch makes several steps (PPO-style, against the log-probs from before the first).
Every rank runs exactly grad_accum_steps micro-steps per mini-batch, because ZeRO's gradient
reductions and ZeRO-3's parameter gathers are collectives: a rank with no rows left forwards a
zero-weight filler row instead of skipping the step. The plan depends only on the row count,
their lengths and the layout, so every rank computes the same plan without talking.

Inside a mini-batch, rows that share a prompt (`groups`) are kept together, so that their
micro-batch forwards the prompt once (learner.shared_prefix), and groups are taken longest
first: each micro-batch holds rows of similar length (less padding to forward and backward).
Micro-batches are dealt to the ranks in turn, so the ranks get similar loads. Which rows make
a mini-batch, and so each update, does not change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MiniBatch:
    rows: list[int]  # every row of the mini-batch (all ranks): the loss normalisers count these
    micro: list[list[int]]  # this rank's micro-batches (grad_accum_steps of them); [] = filler


def plan(num_rows: int, rank: int, world: int, micro_batch: int, accum: int,
         lengths: list[int] | None = None, groups: list[int] | None = None) -> list[MiniBatch]:
    """`lengths`: each row's token count (None: rows in order); `groups`: each row's shared-prompt
    group (None: none shared)."""
    if num_rows < 1:
        raise ValueError("a learner step needs at least one row")
    for name, values in (("lengths", lengths), ("groups", groups)):
        if values is not None and len(values) != num_rows:
            raise ValueError(f"{len(values)} {name} for {num_rows} rows")
    groups = list(range(num_rows)) if groups is None else groups
    longest: dict[int, int] = {}
    if lengths is not None:
        for g, n in zip(groups, lengths, strict=True):
            longest[g] = max(longest.get(g, 0), n)
    size = micro_batch * accum * world
    out = []
    for start in range(0, num_rows, size):
        rows = list(range(start, min(start + size, num_rows)))
        first = {}
        for i in rows:
            first.setdefault(groups[i], i)
        dealt = sorted(rows, key=lambda i: (-longest.get(groups[i], 0), first[groups[i]],
                                            -(lengths[i] if lengths else 0), i))
        chunks = [dealt[i:i + micro_batch] for i in range(0, len(dealt), micro_batch)]
        mine = chunks[rank::world]
        out.append(MiniBatch(rows, mine + [[] for _ in range(accum - len(mine))]))
    return out
