"""Collective weight sync through vLLM's weight-transfer API: learner rank 0 broadcasts the
policy's tensors straight into the vLLM engines' memory (no object store, no pickling).

Two backends share this plumbing. `nccl` (GPU) is vLLM's own. `gloo` is the same protocol over
a gloo group on CPU (the trainer and worker engines below): it runs the whole path the GPU
takes (rendezvous, start / update / finish on every engine, the versions the workers report)
on a machine without CUDA, so the plumbing is tested where CI runs. Both register under their
names when this module is imported, on the learner side and in the PolicyWorker's process
(rollout.engine imports it before it starts an engine with `weight_transfer_config`).

The trainer side is fed by a WeightSource over the DeepSpeed module: HF names, ZeRO-3
partitions gathered one parameter at a time on every rank (the gather is a collective; only
rank 0 sends), optionally only the tensors the stage trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import torch
from vllm.distributed.utils import (
    stateless_destroy_torch_distributed_process_group,
    stateless_init_torch_distributed_process_group,
)
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.factory import (
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.nccl_common import worker_init_payload
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferEngine,
    NCCLWeightTransferInitInfo,
)

from learner.module import POLICY_PREFIX
from learner.weights import gathered

GLOO = "gloo"
# A peer that died mid-broadcast must fail the round, not hang it for gloo's default 30 min
# (one tensor of the CPU-sized models takes well under a second).
GLOO_TIMEOUT = timedelta(seconds=60)


class GlooGroup:
    """The communicator interface the NCCL engines use (broadcast, destroy) over a gloo group
    that lives beside any default process group (vLLM's own, DeepSpeed's)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int):
        self.pg = stateless_init_torch_distributed_process_group(
            host, port, rank, world_size, GLOO, timeout=GLOO_TIMEOUT)

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        self.pg.broadcast(tensor, src).wait()

    def destroy(self) -> None:
        stateless_destroy_torch_distributed_process_group(self.pg)


class GlooWeightTransferEngine(NCCLWeightTransferEngine):
    """Inference side: joins the group at its rank offset, receives tensor by tensor into the
    model's `load_weights` (inside the layerwise reload the NCCL engine starts and finishes)."""

    def init_transfer_engine(self, init_info: NCCLWeightTransferInitInfo) -> None:
        self.packed = False  # packing needs CUDA streams
        rank = self.parallel_config.rank + init_info.rank_offset
        self.model_update_group = GlooGroup(init_info.master_address, init_info.master_port,
                                            rank, init_info.world_size)

    def receive_weights(self, update_info) -> None:
        if self.model_update_group is None:
            raise RuntimeError("gloo weight transfer not initialised: call "
                               "init_weight_transfer_engine first")
        for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names,
                                           update_info.shapes, strict=True):
            weight = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)
            self.model_update_group.broadcast(weight, src=0)
            self.model.load_weights([(name, weight)])


@dataclass
class GlooTrainerInitInfo(NCCLTrainerInitInfo):
    backend: ClassVar[str] = GLOO
    packed: bool = False


class GlooTrainerWeightTransferEngine(NCCLTrainerWeightTransferEngine):
    """Trainer side: rank 0 opens the group while the workers join it, then sends one tensor
    at a time; the NCCL engine's send_weights drives the round (start, update, finish)."""

    init_info_cls = GlooTrainerInitInfo

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        if source is None:
            raise ValueError("the gloo trainer engine needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, packed=False)
        if not engine.is_sender:
            return engine
        worker_info = NCCLWeightTransferInitInfo(
            master_address=init_info.master_address, master_port=init_info.master_port,
            rank_offset=1, world_size=init_info.world_size, packed=False)
        # The workers block in the rendezvous until rank 0 joins: both at once.
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine,
                                 worker_init_payload(worker_info))
            engine.model_update_group = GlooGroup(init_info.master_address,
                                                  init_info.master_port, 0, init_info.world_size)
            joined.result()
        return engine

    def _broadcast(self, source: WeightSource, meta: list[ParamMeta]) -> None:
        if not self.is_sender:
            for _ in source:  # the other ranks' part of each ZeRO-3 gather
                pass
            return
        for _name, tensor in self._checked_iter(source, meta):
            self.model_update_group.broadcast(tensor.contiguous(), src=0)


WeightTransferEngineFactory.register_engine(GLOO, GlooWeightTransferEngine)
WeightTransferTrainerFactory.register_engine(GLOO, GlooTrainerWeightTransferEngine)
TRAINER_INIT_INFO = {c.backend: c for c in (NCCLTrainerInitInfo, GlooTrainerInitInfo)}


class ZeroPolicySource(WeightSource):
    """The policy's tensors under their HF names: all of them, or `only` these state names."""

    def __init__(self, engine, only: set[str] | None = None):
        self.engine = engine
        self.names = [n for n in engine.module.state_dict()
                      if n.startswith(POLICY_PREFIX) and (only is None or n in only)]

    def metadata(self) -> list[ParamMeta]:
        state = self.engine.module.state_dict(keep_vars=True)
        out = []
        for name in self.names:
            t = state[name]
            shape = tuple(getattr(t, "ds_shape", t.shape))  # ZeRO-3: the full shape
            out.append(ParamMeta(name[len(POLICY_PREFIX):], t.dtype, shape))
        return out

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in gathered(self.engine, self.names):
            # A gathered ZeRO-3 parameter is re-partitioned at the next item; vLLM may still
            # be loading it, so it travels as a copy.
            yield name[len(POLICY_PREFIX):], tensor.detach().clone()


def trainer_engine(backend: str, engine, rank: int, addr: str, port: int, world_size: int,
                   client):
    """Called on every learner rank; rank 0 rendezvouses with the workers (world_size =
    1 + all their vLLM ranks) and later sends. `backend`: nccl or gloo."""
    info = TRAINER_INIT_INFO[backend](master_address=addr, master_port=port,
                                      world_size=world_size, rank=rank)
    return WeightTransferTrainerFactory.trainer_init(info, client=client,
                                                     source=ZeroPolicySource(engine))


def send(transfer, engine, only: set[str] | None) -> None:
    """One round into every connected engine: the policy's tensors, or `only` these."""
    transfer.source = ZeroPolicySource(engine, only)
    transfer.send_weights()
