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


@pytest.mark.parametrize("override, allowed", [
    ("rollout.group_size=-1", ">= 2"), ("rollout.group_size=1", ">= 2"),
    ("rollout.max_turns=0", ">= 1"), ("rollout.sampling.temperature=nan", "> 0"),
    ("rollout.sampling.temperature=0", "> 0"), ("rollout.sampling.top_p=1.5", "(0, 1]"),
    ("learner.zero_stage=7", "one of 0, 1, 2, 3"), ("retrieval.num_shards=0", ">= 1"),
    ("train.grpo_video_fraction=1.5", "[0, 1)"), ("rollout.gpu_memory_utilization=5", "(0, 1]"),
    ("retrieval.serve_port=99999", "[1, 65535]"), ("retrieval.serve_port=0", "[1, 65535]"),
    ("model.dtype=bogus", "one of float32"),
    ("rollout.weight_transport=tcp", "one of auto, object_store, nccl, gloo"), ("learner.lr=-1", "> 0"),
    ("train.max_query_draws=0", ">= 1"), ("corpus.synth.test_fraction=1", "[0, 1)"),
    ("rollout.block_size=0", "null or >= 1"), ("learner.grpo_lr=inf", "null or > 0"),
    ("learner.infonce_negatives=10", "at most retrieval.topk - 1 = 9"),
    ("sqr.refine_scale=0", "> 0"),
])
def test_out_of_range_values_name_key_value_and_range(override, allowed):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config("cpu_tiny", [override])
    assert f"{key} = " in str(err.value) and allowed in str(err.value)


def test_every_preset_is_in_range():
    from config.loader import PRESETS_DIR

    for preset in PRESETS_DIR.glob("*.yaml"):
        load_config(preset.stem)


def test_the_checked_dtypes_are_the_loaders():
    from config.checks import DTYPES
    from models.loading import DTYPES as LOADER_DTYPES

    assert set(DTYPES) == set(LOADER_DTYPES)


@pytest.mark.parametrize("text, where", [
    ("rollout: 5\n", "'rollout'"), ("rollout:\n  sampling: 3\n", "'rollout.sampling'"),
    ("- a\n- b\n", "top level must be a mapping"), ("train:\n  sft_steps: many\n", "'train.sft_steps'"),
])
def test_a_preset_file_that_does_not_fit_names_the_file_and_key(tmp_path, text, where):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)) as err:
        load_config(path)
    assert where in str(err.value)


def test_a_scalar_override_where_a_section_belongs_names_the_key():
    with pytest.raises(ConfigError, match="'rollout' in override 'rollout=5'"):
        load_config("cpu_tiny", ["rollout=5"])


FIG_PRESETS = ("charades_fig", "didemo_fig", "activitynet_fig")


@pytest.mark.parametrize("preset", FIG_PRESETS)
def test_fig_presets_are_the_papers_setup_on_a_built_corpus(preset):
    cfg = load_config(preset)
    paper = load_config("qwen3vl_2b")
    assert cfg.corpus.source == "fig" and cfg.corpus.video_dir.endswith(preset)
    cfg.corpus, cfg.paths.workdir = paper.corpus, paper.paths.workdir
    assert to_yaml(cfg) == to_yaml(paper)


@pytest.mark.parametrize("preset", FIG_PRESETS + ("qwen3vl_2b",))
def test_local_tiny_layered_last_leaves_nothing_of_the_cluster(preset):
    """`-c <preset> -c local_tiny` is the embedded default's setup on the preset's corpus:
    local_tiny sets every key a GPU preset sets. The slot words, the heads fit and the
    refinement's step are cpu_tiny's own, like its corpus: they were measured where queries hide
    a detail from the text search."""
    local = load_config([preset, "local_tiny"])
    default = load_config("cpu_tiny")
    own = ("slot_word_weight", "fit_steps", "refine_scale")
    assert tuple(getattr(local.sqr, k) for k in own) == (0.0, 0, 1.0)
    assert tuple(getattr(default.sqr, k) for k in own) == (0.1, 1500, 0.5)
    local.corpus, local.paths.workdir = default.corpus, default.paths.workdir
    for k in own:
        setattr(local.sqr, k, getattr(default.sqr, k))
    assert to_yaml(local) == to_yaml(default)


def test_extends_applies_the_parent_first_and_names_a_loop(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: cpu_tiny\ntrain:\n  sft_steps: 7\n")
    cfg = load_config(str(child))
    assert cfg.train.sft_steps == 7 and cfg.corpus.synth.num_videos == 256
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="'extends' loops"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: [cpu_tiny]\n")
    with pytest.raises(ConfigError, match="must name one preset"):
        load_config(str(tmp_path / "c.yaml"))


def test_a_built_corpus_needs_its_directory():
    with pytest.raises(ConfigError, match="corpus.video_dir"):
        load_config("cpu_tiny", ["corpus.source=fig"])
    cfg = load_config("cpu_tiny", ["corpus.source=fig", "corpus.video_dir=corpora/x"])
    assert cfg.corpus.video_dir.startswith("/") and cfg.corpus.video_dir.endswith("corpora/x")
