"""LearnerGroup: W learner ranks on Ray actors forming one torch.distributed group (gloo on CPU,
nccl on GPU), each hosting a learner.Learner (DeepSpeed ZeRO-2/3).

Rank 0 picks the rendezvous address and port on its own node; the ranks are placed by one
placement group (PACK: NCCL prefers one node). The actors outlive a stage: `build` replaces the
rank's learner (SFT, then GRPO from the SFT export) inside the same process group. Every call
fans out to all ranks, since each step, save, load and ZeRO-3 gather is a collective, and
returns rank 0's answer. Data goes through the object store once (`ray.put`), read by all ranks.

Weight sync, by `rollout.weight_transport`: rank 0's tensors are returned into the object
store and handed to the PolicyWorkers as `actors.rollout_pool.Weights` (WorkerPool.sync loads
them, versioned), or `connect_workers` + `push_weights` broadcast them into the engines with
vLLM's weight-transfer API (nccl on GPU, gloo on CPU).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors import pin_to_cpus, role_resources
from actors.rollout_pool import Weights
from config.schema import Config
from models.loading import model_dirs

PLACEMENT_TIMEOUT_S = 600  # an autoscaling cluster may need minutes to add nodes


@ray.remote
class LearnerRank:
    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.learner = None
        self.transfer = None  # the broadcast sender (learner.weight_transfer), once connected
        self.client = None

    def address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def join(self, addr: str, port: int) -> None:
        from learner.engine import init_distributed

        init_distributed(self.rank, self.world, addr, port)

    def build(self, cfg: Config, stage: str, policy_dir: str, embedder_dir: str | None,
              ds_overrides: dict | None) -> None:
        from learner.learner import Learner

        if self.learner is not None:
            self.learner.close()
        pin_to_cpus(cfg.resources.learner_cpu_set)
        self.learner = Learner(cfg, stage, policy_dir, embedder_dir, ds_overrides)

    def call(self, method: str, *args):
        return getattr(self.learner, method)(*args)

    @ray.method(num_returns=3)
    def export_weights(self, changed_only: bool = False):
        """((version, whether heads are among the tensors), policy tensors, heads tensors)."""
        version, policy, heads = self.learner.export_weights(changed_only=changed_only)
        return (version, bool(heads)), policy, heads

    def connect_workers(self, backend: str, addr: str, port: int, world_size: int,
                        workers: list, tp: int) -> None:
        """(Re-)forms the broadcast group with these workers' engines (every rank joins the
        call; rank 0 is the sender)."""
        from learner.weight_transfer import trainer_engine

        if self.transfer is not None:
            self.transfer.shutdown()
        self.client = PolicyWorkersClient(workers, tp)
        self.transfer = trainer_engine(backend, self.learner.engine, self.rank, addr, port,
                                       world_size, self.client)

    def push_weights(self, version: int, changed_only: bool) -> ray.ObjectRef | None:
        """One broadcast round: the policy's tensors (those this stage trains with
        `changed_only`) into every engine, which then report `version`; the heads, when sent,
        ride the round's finish through the object store (their ref is returned)."""
        from learner.weight_transfer import send

        _, _, heads = self.learner.export_weights(policy=False, changed_only=changed_only)
        heads_ref = ray.put(heads) if heads else None
        self.client.finish_with = (version, heads_ref)
        send(self.transfer, self.learner.engine, self.learner.sent_names(changed_only))
        return heads_ref

    def close(self) -> None:
        from learner.engine import close_distributed

        if self.transfer is not None:
            self.transfer.shutdown()
        if self.learner is not None:
            self.learner.close()
        close_distributed()


class PolicyWorkersClient:
    """vLLM's weight-sync client protocol over PolicyWorker handles (the broadcast transports).
    Each worker hosts its own engine, so each gets its own rank offset (vLLM's Ray client would
    give every engine offset 1). The finish also hands each worker the round's version and heads
    (`finish_with`, set before the round)."""

    def __init__(self, workers: list, tp: int):
        self.workers, self.tp = list(workers), tp
        self.finish_with: tuple[int, ray.ObjectRef | None] = (0, None)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        ray.get([w.init_weight_transfer_engine.remote(dict(init_info, rank_offset=1 + i * self.tp))
                 for i, w in enumerate(self.workers)])

    def start_weight_update(self) -> None:
        ray.get([w.start_weight_update.remote() for w in self.workers])

    def update_weights(self, update_info: dict) -> None:
        ray.get([w.update_weights.remote(update_info) for w in self.workers])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version, heads_ref = self.finish_with
        ray.get([w.finish_weight_update.remote(version, heads_ref) for w in self.workers])


class LearnerGroup:
    def __init__(self, cfg: Config, num_ranks: int | None = None):
        self.cfg = cfg
        res = cfg.resources
        self.world = num_ranks or res.num_learner_ranks
        bundle = {"CPU": res.cpus_per_learner_rank, **role_resources(cfg, "learner")}
        if res.gpus_per_learner_rank:
            bundle["GPU"] = res.gpus_per_learner_rank
        self.pg = placement_group([bundle] * self.world, strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            raise RuntimeError(f"cannot place {self.world} learner ranks of {bundle} within "
                               f"{PLACEMENT_TIMEOUT_S} s; cluster has {ray.cluster_resources()}"
                               ) from None
        self.ranks = [
            LearnerRank.options(
                num_cpus=res.cpus_per_learner_rank, num_gpus=res.gpus_per_learner_rank,
                resources=role_resources(cfg, "learner"),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i),
            ).remote(i, self.world)
            for i in range(self.world)
        ]
        addr, port = ray.get(self.ranks[0].address.remote())
        ray.get([r.join.remote(addr, port) for r in self.ranks])
        self.stage: str | None = None

    def _all(self, method: str, *args) -> list:
        return ray.get([getattr(r, method).remote(*args) for r in self.ranks])

    def _call(self, method: str, *args):
        refs = [ray.put(a) if isinstance(a, list) else a for a in args]  # one copy for W ranks
        return self._all("call", method, *refs)[0]

    def build(self, stage: str, policy_dir: str | Path | None = None,
              embedder_dir: str | Path | None = None, cfg: Config | None = None,
              ds_overrides: dict | None = None) -> None:
        """(Re)create every rank's learner for a stage; defaults: the config's models."""
        cfg = cfg or self.cfg
        if policy_dir is None or embedder_dir is None:
            default_policy, default_embedder = model_dirs(cfg)
            policy_dir = policy_dir or default_policy
            embedder_dir = embedder_dir or default_embedder
        self._all("build", cfg, stage, str(policy_dir),
                  None if embedder_dir is None else str(embedder_dir), ds_overrides)
        self.stage = stage

    def with_learner(self, **learner_overrides) -> Config:
        """The group's config with LearnerConfig fields replaced (for `build(cfg=...)`)."""
        return replace(self.cfg, learner=replace(self.cfg.learner, **learner_overrides))

    def grpo_step(self, samples: list, policy_version: int | None = None) -> dict[str, float]:
        return self._call("grpo_step", samples, policy_version)

    def sft_step(self, examples: list) -> dict[str, float]:
        return self._call("sft_step", examples)

    def fit_heads(self, examples: list, heldout: list) -> dict:
        return self._call("fit_heads", examples, heldout)

    def sft_eval(self, examples: list) -> dict[str, float]:
        return self._call("sft_eval", examples)

    def save(self, directory: str | Path, driver_state: dict) -> str:
        return self._call("save", str(directory), driver_state)

    def load(self, path: str | Path) -> dict:
        return self._call("load", str(path))

    def export_hf(self, out_dir: str | Path) -> str:
        return self._call("export_hf", str(out_dir))

    def export_weights(self, changed_only: bool = False) -> Weights:
        """Rank 0's tensors, left in the object store for the workers to read: all of them, or
        with `changed_only` those this stage trains (the heads then only when they train)."""
        refs = [r.export_weights.remote(changed_only) for r in self.ranks]
        ray.get([ref for triple in refs[1:] for ref in triple])  # the other ranks' part of a gather
        meta_ref, model_ref, heads_ref = refs[0]
        version, has_heads = ray.get(meta_ref)  # no heads: this stage does not train them
        return Weights(version=version, model_ref=model_ref,
                       heads_ref=heads_ref if has_heads else None, full=not changed_only)

    def connect_workers(self, workers: list, backend: str, tp: int = 1) -> None:
        """One broadcast group spanning learner rank 0 and every vLLM rank of the workers
        (re-formed when called again)."""
        addr, port = ray.get(self.ranks[0].address.remote())
        self._all("connect_workers", backend, addr, port, 1 + len(workers) * tp, workers, tp)

    def push_weights(self, version: int, changed_only: bool) -> Weights:
        """Broadcast into every connected engine, which then reports `version`; the Weights
        returned carry no model (the engines hold it) and the heads' ref when they were sent."""
        heads_ref = self._all("push_weights", version, changed_only)[0]
        return Weights(version=version, model_ref=None, heads_ref=heads_ref,
                       full=not changed_only)

    def shutdown(self) -> None:
        try:
            ray.get([r.close.remote() for r in self.ranks], timeout=120)
        finally:
            for r in self.ranks:
                ray.kill(r)
            remove_placement_group(self.pg)
