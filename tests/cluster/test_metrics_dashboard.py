"""The metrics the actors export and the Grafana dashboard built on them (naming rules in
tests/cluster/metrics_spec.py)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cluster.metrics_spec import METRICS, REWARD_COMPONENTS, SERIES, prom_series

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


# --------------------------------------------------------------------------- metrics names


def test_ray_exports_metric_names_as_the_dashboard_expects():
    """Drive Ray's own metrics recorder (the dashboard agent's exporter) and read the
    Prometheus exposition it produces."""
    script = textwrap.dedent("""
        from ray.util.metrics import Counter, Gauge, Histogram
        # the user-facing classes record through the OpenTelemetry instruments
        assert type(Counter("c")._metric).__name__ == "Count"
        assert type(Gauge("g")._metric).__name__ == "Gauge"
        assert type(Histogram("h", boundaries=[1.0])._metric).__name__ == "Histogram"
        from ray._private.telemetry.open_telemetry_metric_recorder import (
            OpenTelemetryMetricRecorder)
        from prometheus_client import REGISTRY, generate_latest
        r = OpenTelemetryMetricRecorder(gauge_metric_ttl_seconds=60)
        r.register_counter_metric("rollout_generated_tokens", "")
        r.set_metric_value("rollout_generated_tokens", {"worker": "0"}, 5.0)
        r.register_gauge_metric("rollout_tokens_per_second", "")
        r.set_metric_value("rollout_tokens_per_second", {"worker": "0"}, 5.0)
        r.register_histogram_metric("retrieval_search_seconds", "", [0.01, 0.1, 1.0])
        r.set_metric_value("retrieval_search_seconds", {}, 0.05)
        print(generate_latest(REGISTRY).decode())
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    names = {m.group(1) for m in re.finditer(r"^(ray_[a-z_]+)[{ ]", out, re.M)}
    assert names == (prom_series("rollout_generated_tokens", "Counter")
                     | prom_series("rollout_tokens_per_second", "Gauge")
                     | prom_series("retrieval_search_seconds", "Histogram"))
    assert 'worker="0"' in out


@pytest.mark.slow
def test_metrics_on_a_live_ray_endpoint(tmp_path):
    """Every series the dashboard queries shows up on a local cluster's metrics port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(f"""
        import json, time, urllib.request
        import ray
        from ray.util.metrics import Counter, Gauge, Histogram
        ray.init(address="local", num_cpus=1, include_dashboard=False,
                 _metrics_export_port={port},
                 _system_config={{"metrics_report_interval_ms": 1000}})
        METRICS = {json.dumps(METRICS)}
        @ray.remote(num_cpus=0)
        class Emitter:
            def emit(self, seconds):
                made = {{}}
                for name, (kind, tags) in METRICS.items():
                    tag_keys = tuple(tags) or None
                    made[name] = {{"Counter": lambda: Counter(name, "", tag_keys),
                                   "Gauge": lambda: Gauge(name, "", tag_keys),
                                   "Histogram": lambda: Histogram(
                                       name, "", [0.01, 0.1, 1.0], tag_keys)}}[kind]()
                end = time.time() + seconds
                while time.time() < end:
                    for name, (kind, tags) in METRICS.items():
                        t = {{k: "total" if k == "component" else "0" for k in tags}} or None
                        m = made[name]
                        (m.inc if kind == "Counter" else m.set if kind == "Gauge"
                         else m.observe)(0.05, tags=t)
                    time.sleep(0.5)
        e = Emitter.remote()
        ref = e.emit.remote(60)
        wanted = set({json.dumps(sorted(SERIES))})
        deadline, found = time.time() + 60, set()
        while time.time() < deadline and found != wanted:
            time.sleep(2)
            text = urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode()
            found = {{line.split("{{")[0].split(" ")[0] for line in text.splitlines()
                     if not line.startswith("#")}} & wanted
        print(json.dumps(sorted(found)))
        ray.shutdown()
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert found == set(SERIES), f"missing on the endpoint: {set(SERIES) - found}"


# --------------------------------------------------------------------------- dashboard

PROMQL_WORDS = {
    # functions and aggregations
    "sum", "avg", "max", "min", "count", "rate", "irate", "increase", "delta", "deriv",
    "histogram_quantile", "clamp_min", "clamp_max", "abs", "topk", "bottomk", "quantile",
    "avg_over_time", "max_over_time", "min_over_time", "last_over_time", "vector",
    "scalar", "time", "label_replace", "sort", "sort_desc", "round",
    # keywords and modifiers
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool",
}
COUNTER_LIKE = ("_total", "_bucket", "_sum", "_count")


def strip_promql(expr: str) -> str:
    """Drop strings, label matchers, ranges and grouping label lists from a PromQL expr."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)",
                  r"\1 ", expr)
    return expr


def metric_names(expr: str) -> set[str]:
    idents = re.findall(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", strip_promql(expr))
    return {i for i in idents if i not in PROMQL_WORDS}


def rate_arguments(expr: str) -> list[str]:
    return re.findall(r"\b(?:rate|irate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", expr)


@pytest.fixture(scope="module")
def dashboard():
    return json.loads((CLUSTER / "grafana_dashboard.json").read_text())


def all_panels(dashboard) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def targets(dashboard):
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            yield p, t["expr"]


def test_promql_name_extraction_catches_wrong_names():
    assert metric_names('sum by (worker) (rate(ray_x_total{a="b", c=~"$v"}[$__rate_interval]))'
                        ) == {"ray_x_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(ray_h_bucket[5m])))"
                        ) == {"ray_h_bucket"}
    assert metric_names("rollout_generated_tokens") == {"rollout_generated_tokens"}
    assert metric_names("sum(rate(ray_a_total[1m])) / sum(ray_b)") == {"ray_a_total", "ray_b"}


def test_dashboard_queries_only_the_exported_metrics(dashboard):
    exprs = list(targets(dashboard))
    assert exprs
    used = set()
    for panel, expr in exprs:
        names = metric_names(expr)
        assert names, f"{panel['title']}: no metric in {expr!r}"
        unknown = names - set(SERIES)
        assert not unknown, f"{panel['title']}: {sorted(unknown)} are not series Ray exports"
        for arg in rate_arguments(expr):
            assert arg.endswith(COUNTER_LIKE), f"{panel['title']}: rate() of gauge {arg}"
        for name in names:
            if SERIES[name][1] in ("Counter", "Histogram"):
                assert name in rate_arguments(expr), f"{panel['title']}: raw counter {name}"
        if "histogram_quantile" in expr:
            assert re.search(r"by \((?:\w+, *)*le\b", expr) and "_bucket" in expr
        used |= {SERIES[n][0] for n in names}
    assert used == set(METRICS), f"metrics without a panel: {set(METRICS) - used}"


def test_dashboard_variables_and_datasource(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            assert m, v["query"]["query"]
            assert set() < metric_names(m.group(1)) <= set(SERIES)
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for t in panel["targets"]:
            for ref in re.findall(r"\$(\w+)", t["expr"]):
                assert ref.startswith("__") or ref in variables, f"undefined ${ref}"


def test_dashboard_layout_starts_with_rollout_throughput(dashboard):
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert panels[0]["type"] == "row"
    assert "rollout throughput" in panels[0]["title"].lower()
    first = panels[1]
    assert first["type"] != "row" and "tokens/s" in first["title"]
    assert any(metric_names(t["expr"]) == {"ray_rollout_generated_tokens_total"}
               for t in first["targets"])
    first_row_end = next(p["gridPos"]["y"] for p in panels[1:] if p["type"] == "row")
    first_row = {n for p in panels[1:] if p["gridPos"]["y"] < first_row_end
                 for t in p["targets"] for n in metric_names(t["expr"])}
    assert {"ray_rollout_generated_tokens_total", "ray_rollout_trajectories_total"} <= first_row
    # panels are laid on a 24-column grid without overlapping
    cells = set()
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in all_panels(dashboard):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_dashboard_reward_panels_cover_components(dashboard):
    exprs = [e for _, e in targets(dashboard) if "ray_reward_component" in e]
    assert any("by (component)" in e for e in exprs)
    assert any('component="total"' in e for e in exprs)
    doc = (CLUSTER / "metrics.md").read_text()
    assert all(f"`{c}`" in doc for c in REWARD_COMPONENTS)


def test_metrics_doc_table_matches():
    rows = {}
    for line in (CLUSTER / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1] in ("Counter", "Gauge", "Histogram"):
            name, kind = cells[0].strip("`"), cells[1]
            tags = tuple(t.strip() for t in cells[2].split(",") if t.strip() not in ("", "—"))
            rows[name] = (kind, tags)
            first = {"Counter": f"ray_{name}_total", "Gauge": f"ray_{name}",
                     "Histogram": f"ray_{name}_bucket"}[kind]
            assert f"`{first}`" in cells[3], f"{name}: Prometheus name {cells[3]}"
    assert rows == METRICS


def test_project_metric_definitions_match_the_dashboard():
    """Where the code already creates one of these metrics, its type and tags match."""
    pattern = re.compile(
        r"\b(Counter|Gauge|Histogram)\(\s*[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']"
        r"(?P<rest>[^)]*(?:\([^)]*\)[^)]*)*)\)", re.S)
    skip = {".venv", ".git", "tests", "build", "runs", ".cache", "cluster"}
    sources = [p for top in ROOT.iterdir() if top.is_dir() and top.name not in skip
               and not top.name.startswith(".") for p in top.rglob("*.py")]
    found = []
    for path in sources:
        for m in pattern.finditer(path.read_text(errors="replace")):
            kind, name = m.group(1), m.group(2)
            if name in METRICS:
                tags = re.search(r"tag_keys\s*=\s*\(([^)]*)\)", m.group("rest"))
                keys = None if tags is None else set(re.findall(r"[\"'](\w+)[\"']", tags.group(1)))
                found.append((name, kind, keys, str(path.relative_to(ROOT))))
    # the scan sees the PolicyWorker's metrics (actors/policy_worker.py)
    assert {"rollout_generated_tokens", "rollout_trajectories"} <= {f[0] for f in found}
    for name, kind, keys, where in found:
        assert kind == METRICS[name][0], \
            f"{where}: {name} is a {kind}, the dashboard expects a {METRICS[name][0]}"
        if keys is not None:  # literal tag_keys=(...)
            assert keys == set(METRICS[name][1]), f"{where}: {name} has tags {keys}"
