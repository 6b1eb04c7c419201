"""Full weights out of a (possibly ZeRO-3 partitioned) engine, named as Hugging Face names them.

Every rank must take part (a ZeRO-3 gather is a collective); rank 0 gets the tensors, the
others get empty dicts. Parameters are gathered one at a time, so no rank ever holds more than
one unpartitioned parameter beyond its shard. `export_hf` writes the policy directory layout
that vLLM, transformers and models.loading open: safetensors + config + processor + sqr/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from learner.module import HEADS_PREFIX, split_state
from models.sqr_heads import SQRHeads


def _zero3(engine) -> bool:
    return engine.zero_optimization_stage() == 3


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def gathered(engine, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(module state name, full tensor) in state_dict order; valid only until the next item
    under ZeRO-3 (the parameter is re-partitioned then). All ranks iterate in lockstep."""
    import deepspeed

    module = engine.module
    params = dict(module.named_parameters())
    state = module.state_dict(keep_vars=True)
    for name in list(state) if names is None else names:
        tensor = state[name]
        if _zero3(engine) and name in params:
            with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=None):
                yield name, params[name].data
        else:
            yield name, tensor.data


def trainable_names(module: torch.nn.Module) -> set[str]:
    """State names that training can change: parameters that require grad, and aliases of
    parameters (a tied lm_head) that are neither a parameter name nor a buffer; frozen
    parameters and buffers stay as they were loaded."""
    params = dict(module.named_parameters())
    buffers = {n for n, _ in module.named_buffers()}
    return {n for n in module.state_dict()
            if (n in params and params[n].requires_grad) or (n not in params and n not in buffers)}


def full_state(engine, policy: bool = True, only: set[str] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(policy tensors by HF name, SQR heads tensors) on rank 0, CPU copies; ({}, {}) elsewhere.
    Without `policy`, only the heads (the GPU path sends the policy over NCCL); with `only`,
    only those state names."""
    names = [n for n in engine.module.state_dict() if (policy or n.startswith(HEADS_PREFIX))
             and (only is None or n in only)]
    rank0 = _rank() == 0
    state = {name: t.detach().to("cpu", copy=True) for name, t in gathered(engine, names) if rank0}
    return split_state(state)


def set_heads(engine, state: dict[str, torch.Tensor] | None) -> None:
    """Rank 0's SQR heads tensors (`state`, None elsewhere) into every rank's engine; a
    collective. The optimizer's own fp32 copy is not updated, so this comes after a stage's last
    step (the heads fit, before SFT's export)."""
    import deepspeed

    for name, param in engine.module.heads.named_parameters():
        if _zero3(engine):
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if _rank() == 0:
                    param.data.copy_(state[name])
            continue
        if _rank() == 0:
            param.data.copy_(state[name])
        if dist.is_initialized():
            dist.broadcast(param.data, 0)


def export_hf(engine, processor, out_dir: str | Path) -> Path | None:
    """Write the policy as a Hugging Face directory (rank 0; written aside, then renamed)."""
    out = Path(out_dir)
    policy_state, heads_state = full_state(engine)
    if _rank() == 0:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        module = engine.module
        module.policy.save_pretrained(tmp, state_dict=policy_state, safe_serialization=True)
        processor.save_pretrained(tmp)
        heads = SQRHeads(module.heads.cfg)
        heads.load_state_dict(heads_state)
        heads.save(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    if dist.is_initialized():
        dist.barrier()
    return out if _rank() == 0 else None
