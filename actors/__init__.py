"""Actors: the Ray actors that host the plain-Python pieces (policy workers, retrieval, learner
ranks) and the driver that wires them. The only package besides the Serve app and Ray Data
pipelines that imports Ray."""

import os


def role_resources(cfg, role: str) -> dict[str, float]:
    """The custom resource that places an actor on its role's node type (cluster/README.md)."""
    return {role: 1.0} if cfg.resources.role_resources else {}


def pin_to_cpus(cpus: list[int]) -> None:
    """Pin every thread of this process, and so those it starts later, to `cpus` (an
    actor's own threads are already running when its constructor is)."""
    if not cpus:
        return
    available = set(range(os.cpu_count() or 1))
    if not set(cpus) <= available:
        raise ValueError(f"cpu set {sorted(cpus)} is not within this machine's CPUs "
                         f"{sorted(available)}")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            continue
