"""The files in cluster/: autoscaler configs, KubeRay RayJob, runtime env, Grafana dashboard.

Validation uses Ray's own code wherever Ray has it (the autoscaler's config preparation
and JSON-schema validation, `RuntimeEnv`, the working_dir packager, the metrics
exporter), with no cloud credentials and no network.

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

import copy
import json
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
ROLES = ("rollout", "learner", "retrieval")

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
}
REWARD_COMPONENTS = ("format", "verification", "retrieval", "grounding", "total")


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


def load_yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.fixture(scope="module")
def run_config():
    """configs/qwen3vl_2b.yaml: the production run the cluster files are sized for."""
    return yaml.safe_load((ROOT / "configs" / "qwen3vl_2b.yaml").read_text())


def actors_needed(run_config) -> dict[str, tuple[int, float]]:
    """role -> (number of actors, GPUs per actor) in the production config."""
    r = run_config["resources"]
    return {
        "rollout": (r["num_policy_workers"], r["gpus_per_policy_worker"]),
        "learner": (r["num_learner_ranks"], r["gpus_per_learner_rank"]),
        "retrieval": (run_config["retrieval"]["num_shards"], r["gpus_per_index_shard"]),
    }


# --------------------------------------------------------------------------- autoscaler


def prepared(name: str) -> dict:
    """Load a cluster YAML and fill it out the way `ray up` does before validating."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_yaml(name))
    validate_config(config)
    return config


def test_aws_config_passes_ray_validation():
    config = prepared("aws.yaml")
    assert config["provider"]["type"] == "aws"
    assert config["cluster_synced_files"] == []  # filled from Ray's AWS defaults


def test_ray_validation_is_live():
    """The same validation rejects broken copies of aws.yaml (so the test above can fail)."""
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    good = load_yaml("aws.yaml")
    bad_resource = copy.deepcopy(good)
    bad_resource["available_node_types"]["rollout"]["resources"]["rollout"] = "four"
    unknown_key = copy.deepcopy(good)
    unknown_key["available_node_types"]["learner"]["min_worker"] = 1
    too_many_min = copy.deepcopy(good)
    too_many_min["available_node_types"]["rollout"]["min_workers"] = good["max_workers"] + 1
    for broken, error in ((bad_resource, ValidationError), (unknown_key, ValidationError),
                          (too_many_min, ValueError)):
        with pytest.raises(error):
            validate_config(prepare_config(broken))


def test_aws_worker_types(run_config):
    config = prepared("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no actor may land on the head"
    assert not set(head["resources"]) & set(ROLES)
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    role_of = {}
    for name, node in workers.items():
        res = node["resources"]
        roles = [r for r in ROLES if r in res]
        assert len(roles) == 1, f"{name}: exactly one role tag, got {roles}"
        role_of[name] = roles[0]
        assert 0 <= node["min_workers"] <= node["max_workers"]
        assert node["node_config"]["InstanceType"]
    assert sorted(role_of.values()) == sorted(ROLES), "one worker type per role"
    assert config["idle_timeout_minutes"] > 0
    assert sum(n["min_workers"] for n in workers.values()) <= config["max_workers"]
    for role, (count, gpus_each) in actors_needed(run_config).items():
        (name,) = [n for n, r in role_of.items() if r == role]
        res = workers[name]["resources"]
        # The types are GPU types, big enough for the production run at max size.
        assert res["GPU"] >= 1
        assert res[role] * gpus_each <= res["GPU"], f"{name}: more {role} slots than GPUs"
        assert res[role] * min(workers[name]["max_workers"], config["max_workers"]) >= count


def test_aws_setup_installs_gpu_profile_and_enables_token_auth():
    config = prepared("aws.yaml")
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "-e '.[gpu,dev]'" in setup
    assert "3.11" in setup  # pyproject: requires-python >=3.11,<3.12
    assert config["file_mounts"]["~/videosearch_r1"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert {".venv", "runs", ".cache", ".git"} <= set(config["rsync_exclude"])
    assert "docker" not in load_yaml("aws.yaml")  # docker off
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert len(start) == 1
        assert "RAY_AUTH_MODE=token" in start[0]
        assert "--metrics-export-port=8080" in start[0]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in "".join(
        config["head_start_ray_commands"])


def test_onprem_config_bootstraps_like_ray_up():
    """The local provider needs no cloud: run the whole config bootstrap of `ray up`."""
    from ray.autoscaler._private.commands import _bootstrap_config

    raw = load_yaml("onprem.yaml")
    config = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    assert config["provider"]["type"] == "local"
    (node_type,) = config["available_node_types"].values()
    n = len(raw["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == n
    assert raw["provider"]["head_ip"] not in raw["provider"]["worker_ips"]
    start = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert len(start) == 1 and "RAY_AUTH_MODE=token" in start[0]
    assert "~/.ray/auth_token" in config["file_mounts"]


def run_worker_start(command: str, ips: str, ngpu: int) -> str:
    """Run a worker start command with hostname/nvidia-smi/ray stubbed; return ray's args."""
    stubs = textwrap.dedent(f"""\
        hostname() {{ echo "{ips}"; }}
        nvidia-smi() {{ for i in $(seq {ngpu}); do echo "GPU $i: stub"; done; }}
        ulimit() {{ :; }}
        ray() {{ printf '%s\\n' "$@"; }}
        export RAY_HEAD_IP=10.9.9.9
        """)
    out = subprocess.run(["bash", "-c", stubs + command], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout


def test_onprem_role_map_gives_each_worker_its_role():
    raw = load_yaml("onprem.yaml")
    (command,) = [c for c in raw["worker_start_ray_commands"] if "ray start" in c]
    seen = set()
    for ip in raw["provider"]["worker_ips"]:
        args = run_worker_start(command, f"{ip} 172.17.0.1", ngpu=8).splitlines()
        res = json.loads(next(a for a in args if a.startswith("--resources=")).split("=", 1)[1])
        (role,) = res
        assert role in ROLES
        assert res[role] == (4 if role == "retrieval" else 8)
        assert "--address=10.9.9.9:6379" in args
        seen.add(role)
    assert seen == set(ROLES)
    args = run_worker_start(command, "10.250.0.1", ngpu=1).splitlines()
    assert "--resources={}" in args, "an unmapped machine gets no role"


# --------------------------------------------------------------------------- KubeRay


def test_kuberay_rayjob_structure(run_config):
    import ray

    job = load_yaml("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].split() == [
        "python", "-m", "cli", "train", "--config", "configs/qwen3vl_2b.yaml"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert sorted(groups) == sorted(ROLES)
    needed = actors_needed(run_config)
    for name, group in groups.items():
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams are strings"
        # KubeRay's format for custom resources: JSON in a double-quoted shell word,
        # pasted into the pod's `ray start --resources=...` command line.
        (word,) = shlex.split(params["resources"])
        resources = json.loads(word)
        assert list(resources) == [name], f"{name}: its own role tag only"
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        limits = container["resources"]["limits"]
        gpus = int(limits["nvidia.com/gpu"])
        assert gpus >= 1, f"{name} must request GPUs"
        assert int(container["resources"]["requests"]["nvidia.com/gpu"]) == gpus
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        count, gpus_each = needed[name]
        assert resources[name] * gpus_each <= gpus
        assert resources[name] * group["maxReplicas"] >= count
    assert len(images) == 1, "one image for head and workers"


def test_kuberay_runtime_env_matches_runtime_env_yaml():
    from ray.runtime_env import RuntimeEnv

    job = load_yaml("kuberay-rayjob.yaml")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert env["working_dir"].endswith(".zip"), "a remote working_dir must be a zip URI"
    assert env["env_vars"] == load_yaml("runtime_env.yaml")["env_vars"]


# --------------------------------------------------------------------------- runtime env


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = load_yaml("runtime_env.yaml")
    parsed = RuntimeEnv(**env)
    assert parsed["working_dir"] == "."
    assert {".venv", "runs", ".cache", ".git"} <= set(env["excludes"])
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert env["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    with pytest.raises(TypeError):  # RuntimeEnv rejects non-string env values
        RuntimeEnv(**{**env, "env_vars": {"X": 0}})


def packaged_names(directory: Path, excludes: list[str], tmp_path: Path) -> list[str]:
    """What Ray's working_dir packager puts in the job's zip."""
    from ray._private.runtime_env.packaging import create_package

    out = tmp_path / f"pkg_{len(list(tmp_path.iterdir()))}.zip"
    create_package(str(directory), out, include_gitignore=False, excludes=excludes)
    with zipfile.ZipFile(out) as z:
        return z.namelist()


def test_runtime_env_excludes_with_rays_packager(tmp_path):
    excludes = load_yaml("runtime_env.yaml")["excludes"]
    tree = tmp_path / "repo"
    for rel in (".venv/lib/site.py", "runs/ckpt/model.safetensors", ".cache/models/x.bin",
                ".git/HEAD", "cli/__pycache__/main.cpython-311.pyc", "cli/main.py",
                "configs/qwen3vl_2b.yaml", "cluster/aws.yaml", "rollout/runs.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    names = packaged_names(tree, excludes, tmp_path)
    assert sorted(n for n in names if not n.endswith("/")) == [
        "cli/main.py", "cluster/aws.yaml", "configs/qwen3vl_2b.yaml", "rollout/runs.py"]
    # and on this checkout: small, with the code and configs the entrypoint needs
    names = packaged_names(ROOT, excludes, tmp_path)
    assert "cli/__main__.py" in names and "configs/qwen3vl_2b.yaml" in names
    assert not [n for n in names if n.split("/")[0] in {".venv", "runs", ".cache", ".git"}]


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
