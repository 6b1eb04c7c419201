"""Actors: the Ray actors that host the plain-Python pieces (policy workers, retrieval, learner
ranks) and the driver that wires them. The only package besides the Serve app and Ray Data
pipelines that imports Ray."""


def role_resources(cfg, role: str) -> dict[str, float]:
    """The custom resource that places an actor on its role's node type (cluster/README.md)."""
    return {role: 1.0} if cfg.resources.role_resources else {}
