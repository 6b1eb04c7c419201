"""GPU weight sync through vLLM's native weight-transfer API (NCCL): learner rank 0 broadcasts
every policy tensor straight into the vLLM workers' GPU memory, no host copy.

The trainer side is vLLM's NCCLTrainerWeightTransferEngine, fed by a WeightSource over the
DeepSpeed module: HF names, ZeRO-3 partitions gathered one parameter at a time on every rank (the
gather is a collective; only rank 0 sends). The inference side needs the engine started with
`weight_transfer_config=WeightTransferConfig(backend="nccl")` and the worker methods that
vLLM's weight-sync client calls (see actors.learner.PolicyWorkersClient). Only used when CUDA is
available; vLLM is imported here, never on the CPU path.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
)

from learner.module import POLICY_PREFIX
from learner.weights import gathered


class ZeroPolicySource(WeightSource):
    def __init__(self, engine):
        self.engine = engine
        self.names = [n for n in engine.module.state_dict() if n.startswith(POLICY_PREFIX)]
        self.params = dict(engine.module.named_parameters())

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
            # be packing it, so it travels as a copy.
            yield name[len(POLICY_PREFIX):], tensor.detach().clone()


def trainer_engine(engine, rank: int, addr: str, port: int, world_size: int, client):
    """Called on every learner rank; rank 0 rendezvouses with the workers (world_size =
    1 + all their vLLM ranks) and later sends."""
    info = NCCLTrainerInitInfo(master_address=addr, master_port=port, world_size=world_size,
                               rank=rank)
    return NCCLTrainerWeightTransferEngine.trainer_init(info, client=client,
                                                        source=ZeroPolicySource(engine))
