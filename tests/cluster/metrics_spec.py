"""The metric names the actors export and how Ray 2.60 names them in Prometheus.
How Ray 2.60 names `ray.util.metrics` series in Prometheus (read in the venv's
ray/util/metrics.py, ray/_private/metrics_agent.py and
ray/_private/telemetry/open_telemetry_metric_recorder.py, and seen on a live local cluster):
  * OpenTelemetry is the default metrics path (`RAY_enable_open_telemetry`, default on).
    `Counter` records through `CythonCount`; the dashboard agent registers a monotonic
    sum as an OpenTelemetry observable counter named `ray_<name>` and the OpenTelemetry
    Prometheus exporter appends `_total`: a Counter `x` is exported as `ray_x_total`
    ONLY. (The old OpenCensus path, `RAY_enable_open_telemetry=0`, also exported the
    counter as a gauge `ray_x`; `RAY_EXPORT_COUNTER_AS_GAUGE` only matters there.)
  * `Gauge` `x` -> `ray_x`.
  * `Histogram` `x` -> `ray_x_bucket{le=...}`, `ray_x_sum`, `ray_x_count`.
  * The unit is "1", which the exporter maps to no suffix.
  * Ray adds the labels SessionName, NodeAddress, WorkerId, Component, Version.
`test_ray_exports_metric_names_as_the_dashboard_expects` checks this through Ray's
exporter code in a subprocess; the slow test checks it on a live cluster's endpoint.
"""

from __future__ import annotations

# The metrics the actors export (ray.util.metrics name -> (type, tag keys)).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rollout_generated_tokens": ("Counter", ("worker",)),
    "rollout_tokens_per_second": ("Gauge", ("worker",)),
    "rollout_trajectories": ("Counter", ("worker",)),
    "rollout_turns": ("Counter", ("worker",)),
    "retrieval_search_seconds": ("Histogram", ()),
    "weight_sync_seconds": ("Gauge", ("worker",)),
    "learner_step_seconds": ("Gauge", ()),
    "reward_component": ("Gauge", ("component",)),
    "logprob_mismatch": ("Gauge", ()),
    "train_step": ("Gauge", ()),
    "grpo_staleness": ("Gauge", ()),
    "grpo_stale_episodes_dropped": ("Counter", ()),
}
REWARD_COMPONENTS = ("format", "verification", "retrieval", "grounding", "found", "total")


def prom_series(name: str, kind: str) -> set[str]:
    """The Prometheus series names Ray 2.60 exports for one ray.util.metrics metric."""
    base = f"ray_{name}"
    if kind == "Counter":
        return {f"{base}_total"}
    if kind == "Gauge":
        return {base}
    if kind == "Histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    raise ValueError(kind)


SERIES = {s: (n, k) for n, (k, _) in METRICS.items() for s in prom_series(n, k)}
