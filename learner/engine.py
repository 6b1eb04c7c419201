"""DeepSpeed set-up: the process group, the config from LearnerConfig, the training engine and
the frozen reference model.

Choices on CPU: fp32 (bf16 needs AMX warm-up and buys nothing for tiny models), `gloo`, and
`torch.optim.AdamW` handed to DeepSpeed as a client optimizer (zero_force_ds_cpu_optimizer off):
DeepSpeed's CPU Adam would JIT-compile with gcc first. The shared-memory all-reduce op, which
only serves DeepSpeed's tensor-parallel inference, is kept from JIT-compiling too. On GPU: bf16
with fp32 master weights in the ZeRO optimizer, `nccl`, fused torch AdamW.
"""

from __future__ import annotations

import copy
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from config.schema import LearnerConfig
from learner.module import HEADS_PREFIX

NO_PRINT = 2**31 - 1


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu() else torch.device("cpu")


def init_distributed(rank: int, world: int, addr: str, port: int, timeout_s: float = 1800) -> None:
    """Join the learner process group (env:// rendezvous at rank 0's addr:port)."""
    import deepspeed

    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK="0")
    if on_gpu():
        torch.cuda.set_device(0)  # Ray shows each rank only its own GPU
    else:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo",
                               auto_mpi_discovery=False, verbose=False,
                               timeout=timedelta(seconds=timeout_s))


def init_single_rank() -> None:
    """This process alone as the learner group, on a free local port (in-process benchmarks and
    tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed(0, 1, "127.0.0.1", port)


def close_distributed() -> None:
    """Explicit teardown: a process group left to interpreter exit once ended 2-rank ZeRO-3
    with SIGABRT ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def ds_config(lcfg: LearnerConfig, world: int, overrides: dict | None = None) -> dict:
    if lcfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"learner.zero_stage must be 0-3, got {lcfg.zero_stage}")
    if lcfg.micro_batch_size < 1 or lcfg.grad_accum_steps < 1:
        raise ValueError("learner.micro_batch_size and learner.grad_accum_steps must be >= 1")
    cfg = {
        "train_micro_batch_size_per_gpu": lcfg.micro_batch_size,
        "gradient_accumulation_steps": lcfg.grad_accum_steps,
        "train_batch_size": lcfg.micro_batch_size * lcfg.grad_accum_steps * world,
        "gradient_clipping": lcfg.max_grad_norm,
        "zero_optimization": {"stage": lcfg.zero_stage},
        "bf16": {"enabled": on_gpu()},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": NO_PRINT,
        "wall_clock_breakdown": False,
    }
    return _merge(cfg, overrides or {})


def sft_schedule(steps: int, lcfg: LearnerConfig) -> dict:
    """ds_config overrides for SFT's learning rate: linear warm-up, then cosine decay.

    At a constant rate up to the last step, SFT ends wherever its last batches pushed it; a
    decaying rate ends on an average of the data.
    """
    if steps < 1 or not 0 <= lcfg.sft_warmup_fraction < 1 or not 0 <= lcfg.sft_min_lr_ratio <= 1:
        raise ValueError(f"SFT schedule needs steps >= 1, a warm-up fraction in [0, 1) and a "
                         f"minimum ratio in [0, 1]; got {steps}, {lcfg.sft_warmup_fraction}, "
                         f"{lcfg.sft_min_lr_ratio}")
    return {"scheduler": {"type": "WarmupCosineLR", "params": {
        "total_num_steps": steps,
        "warmup_num_steps": max(2, round(lcfg.sft_warmup_fraction * steps)),
        "warmup_type": "linear", "warmup_min_ratio": 0.1, "cos_min_ratio": lcfg.sft_min_lr_ratio}}}


def param_groups(module: torch.nn.Module, lr: float, heads_scale: float) -> list[dict]:
    """The trainable parameters in one group at lr, or with heads_scale != 1 the SQR heads
    (`heads.*`) in a group of their own at lr x heads_scale (schedulers scale each group's own
    rate). One group when the rates agree: ZeRO flattens each group into its own buffer, and
    two buffers sum the clipping norm in another order, which moved the default's SFT."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    heads = [p for n, p in named if n.startswith(HEADS_PREFIX)]
    if not heads or heads_scale == 1.0:
        return [{"params": [p for _, p in named], "lr": lr}]
    rest = [p for n, p in named if not n.startswith(HEADS_PREFIX)]
    return [{"params": rest, "lr": lr}, {"params": heads, "lr": lr * heads_scale}]


def build_engine(module: torch.nn.Module, lcfg: LearnerConfig, world: int,
                 overrides: dict | None = None):
    import deepspeed

    module.to(device())  # the optimizer is built on the parameters where they will live
    # Training mode: transformers recomputes activations (gradient checkpointing) only then;
    # Qwen3-VL has no dropout, so the numbers are those of eval mode.
    module.train()
    groups = param_groups(module, lcfg.lr, lcfg.heads_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=lcfg.lr, weight_decay=lcfg.weight_decay,
                                  fused=on_gpu())
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer,
                                      config=ds_config(lcfg, world, overrides))
    return engine


def build_reference(model: torch.nn.Module, lcfg: LearnerConfig, world: int,
                    overrides: dict | None = None) -> torch.nn.Module:
    """The frozen policy for the KL term: sharded like the policy under ZeRO-3, a plain
    replica otherwise (it has no optimizer state to shard)."""
    import deepspeed

    model = model.eval().requires_grad_(False)
    if lcfg.zero_stage != 3:
        return model.to(device(), torch.bfloat16 if on_gpu() else torch.float32)
    cfg = ds_config(lcfg, world, overrides)
    cfg = {k: cfg[k] for k in ("train_micro_batch_size_per_gpu", "train_batch_size",
                               "gradient_accumulation_steps", "zero_optimization", "bf16",
                               "steps_per_print")}
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    engine.eval()  # DeepSpeedEngine.eval() returns None, unlike nn.Module.eval()
    return engine
