import pytest

from config import ConfigError, load_config, to_yaml
from config.schema import Config, IndexType


def test_presets_load_and_differ():
    tiny = load_config("cpu_tiny")
    paper = load_config("qwen3vl_2b")
    assert isinstance(tiny, Config)
    assert tiny.model.policy == "tiny" and tiny.model.dtype == "float32"
    assert paper.model.dtype == "bfloat16" and paper.retrieval.use_gpu
    assert paper.rollout.group_size == 8 and paper.rollout.max_turns == 3
    assert paper.sqr.num_tokens == 8 and paper.video.max_frames == 64


def test_overrides_are_typed():
    cfg = load_config("cpu_tiny", ["rollout.group_size=4", "sqr.num_tokens=4",
                                   "retrieval.index_type=hnsw", "learner.lr=3e-5"])
    assert cfg.rollout.group_size == 4
    assert cfg.sqr.num_tokens == 4
    assert cfg.retrieval.index_type is IndexType.hnsw
    assert cfg.learner.lr == pytest.approx(3e-5)


@pytest.mark.parametrize("override, key", [
    ("rollout.group_sise=4", "rollout.group_sise"),
    ("nothing=1", "nothing"),
    ("rollout.group_size=eight", "rollout.group_size"),
    ("retrieval.index_type=spiral", "retrieval.index_type"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("cpu_tiny", [override])


def test_override_without_equals_and_unknown_preset():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("cpu_tiny", ["rollout.group_size"])
    with pytest.raises(ConfigError, match="preset not found"):
        load_config("no_such_preset")


def test_bad_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  max_turnz: 3\n")
    with pytest.raises(ConfigError, match="max_turnz"):
        load_config(path)


def test_yaml_round_trip(tmp_path):
    cfg = load_config("cpu_tiny", ["rollout.max_turns=2"])
    path = tmp_path / "dump.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_paths_are_absolute_and_models_cached_per_user(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config("cpu_tiny", ["paths.workdir=rel/run"])
    assert cfg.paths.workdir == str(tmp_path / "rel" / "run")
    assert cfg.paths.model_cache == str(tmp_path / "xdg" / "videosearch-r1" / "models")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config("cpu_tiny").paths.model_cache == str(
        tmp_path / "home" / ".cache" / "videosearch-r1" / "models")
