"""Actors: the Ray actors that host the plain-Python pieces (policy workers, retrieval, learner
ranks) and the driver that wires them. The only package besides the Serve app and Ray Data
pipelines that imports Ray."""
