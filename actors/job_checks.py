"""Checks of the job's surroundings before it starts actors: whether its outputs outlive a
`ray job submit` copy, and whether the cluster can place its actors at all. Plain functions
of the config and the environment, so they are tested without a cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

from config.schema import Config


def required_cpus(cfg: Config) -> float:
    """CPUs the job's long-lived actors ask for at once: the index shards and the query
    encoder, the policy workers, the learner ranks (during SFT and GRPO)."""
    res = cfg.resources
    return ((cfg.retrieval.num_shards + 1 + res.num_policy_workers) * res.cpus_per_actor
            + res.num_learner_ranks * res.cpus_per_learner_rank)


def cpu_shortfall(cfg: Config, available: float) -> str | None:
    """What to tell a user whose cluster cannot place the job's actors: they would wait for
    CPUs forever on a fixed cluster (an autoscaling one adds nodes, so this only warns)."""
    need = required_cpus(cfg)
    if available >= need:
        return None
    return (f"the Ray cluster has {available:g} CPUs and this job's actors ask for {need:g} "
            f"({cfg.retrieval.num_shards} index shards, a query encoder and "
            f"{cfg.resources.num_policy_workers} policy workers at resources.cpus_per_actor="
            f"{cfg.resources.cpus_per_actor:g}, {cfg.resources.num_learner_ranks} learner ranks at "
            f"resources.cpus_per_learner_rank={cfg.resources.cpus_per_learner_rank:g}); unless "
            "the cluster autoscales, the job waits for them forever. On one machine start the "
            "head with logical CPUs to spare (ray start --head --num-cpus=8: the tiny default's "
            "actors are mostly idle), or lower those resources")


def ray_job_copy() -> Path | None:
    """The directory `ray job submit` unpacked the submitted working_dir into, when this
    process is such a job's entrypoint (it is its cwd); else None."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return Path.cwd() if (job.get("runtime_env") or {}).get("working_dir") else None


def check_outputs_outlive_the_job(cfg: Config) -> None:
    """A submitted job runs in Ray's temporary copy of the submitted directory, which goes
    with the Ray session: outputs written under it would be lost."""
    copy = ray_job_copy()
    for key in ("workdir", "model_cache"):
        path = Path(getattr(cfg.paths, key))
        if copy is not None and path.is_relative_to(copy):
            raise ValueError(
                f"paths.{key} is {path}, inside Ray's temporary copy of the submitted directory "
                f"({copy}), which is deleted with the Ray session: pass an absolute path, e.g. "
                f"paths.{key}=$PWD/runs/cpu_tiny on the command line you submit")
