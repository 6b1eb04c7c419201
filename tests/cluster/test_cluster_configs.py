"""The files in cluster/: autoscaler configs, KubeRay RayJob, runtime env, Grafana dashboard.

Validation uses Ray's own code wherever Ray has it (the autoscaler's config preparation
and JSON-schema validation, `RuntimeEnv`, the working_dir packager, the metrics
exporter), with no cloud credentials and no network.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
ROLES = ("rollout", "learner", "retrieval")

def load_yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.fixture(scope="module")
def run_config():
    """configs/qwen3vl_2b.yaml: the production run the cluster files are sized for."""
    return yaml.safe_load((ROOT / "configs" / "qwen3vl_2b.yaml").read_text())


def actors_needed(run_config) -> dict[str, tuple[int, float, float]]:
    """role -> (number of actors, GPUs per actor, CPUs per actor) in the production config."""
    from config.schema import ResourcesConfig

    r = {**vars(ResourcesConfig()), **run_config["resources"]}
    return {
        "rollout": (r["num_policy_workers"], r["gpus_per_policy_worker"], r["cpus_per_actor"]),
        "learner": (r["num_learner_ranks"], r["gpus_per_learner_rank"], r["cpus_per_learner_rank"]),
        "retrieval": (run_config["retrieval"]["num_shards"], r["gpus_per_index_shard"],
                      r["cpus_per_actor"]),
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
    for role, (count, gpus_each, cpus_each) in actors_needed(run_config).items():
        (name,) = [n for n, r in role_of.items() if r == role]
        res = workers[name]["resources"]
        # The types are GPU types, big enough for the production run at max size.
        assert res["GPU"] >= 1
        assert res[role] * gpus_each <= res["GPU"], f"{name}: more {role} slots than GPUs"
        assert res[role] * cpus_each <= res["CPU"], f"{name}: more {role} slots than CPUs"
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
        count, gpus_each, cpus_each = needed[name]
        assert resources[name] * gpus_each <= gpus
        assert resources[name] * cpus_each <= int(limits["cpu"]), f"{name}: more slots than CPUs"
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
