"""Benchmarks run by `make bench`: each module's `run(results)` adds its numbers."""
