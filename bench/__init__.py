"""Benchmarks run by `make bench`: each module's `run(results)` adds its numbers."""

# Random tiny weights: speed does not depend on what they know, and pretraining the tiny
# models takes minutes.
RANDOM_TINY_MODELS = ["model.tiny_pretrain.embedder.steps=0", "model.tiny_pretrain.policy.steps=0"]
