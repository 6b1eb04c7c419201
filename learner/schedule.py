"""Which rows each rank forwards in which micro-step.

One optimizer step consumes micro_batch_size x grad_accum_steps x world rows (a mini-batch);
a longer batch makes several steps (PPO-style, against the log-probs from before the first).
Every rank runs exactly grad_accum_steps micro-steps per mini-batch, because ZeRO's gradient
reductions and ZeRO-3's parameter gathers are collectives: a rank with no rows left forwards a
zero-weight filler row instead of skipping the step. The plan depends only on the row count,
their lengths and the layout, so every rank computes the same plan without talking.

Inside a mini-batch, rows are dealt longest first: each micro-batch holds rows of similar
length (less padding to forward and backward) and the ranks get similar loads. Which rows
make a mini-batch, and so each update, does not change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MiniBatch:
    rows: list[int]  # every row of the mini-batch (all ranks): the loss normalisers count these
    micro: list[list[int]]  # this rank's micro-batches (grad_accum_steps of them); [] = filler


def plan(num_rows: int, rank: int, world: int, micro_batch: int, accum: int,
         lengths: list[int] | None = None) -> list[MiniBatch]:
    """`lengths`: each row's token count (None: rows in order)."""
    if num_rows < 1:
        raise ValueError("a learner step needs at least one row")
    if lengths is not None and len(lengths) != num_rows:
        raise ValueError(f"{len(lengths)} lengths for {num_rows} rows")
    size = micro_batch * accum * world
    out = []
    for start in range(0, num_rows, size):
        rows = list(range(start, min(start + size, num_rows)))
        dealt = rows if lengths is None else sorted(rows, key=lambda i: -lengths[i])
        mine = dealt[rank::world]
        out.append(MiniBatch(rows, [mine[i * micro_batch:(i + 1) * micro_batch]
                                    for i in range(accum)]))
    return out
