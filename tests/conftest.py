"""Session fixtures shared by all test packages: one tiny-model cache, one synthetic
corpus and one config pointing at them, built once per run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is: elsewhere they are deselected (reported as such)."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's status before native teardown: about one `make test` in eight
    (CI once, here once) passed every test and then segfaulted in the interpreter's final
    teardown, after faulthandler is off, so no stack says which library's destructors crash
    (every engine, learner and Ray cluster is shut down by its fixture before this)."""
    if EXIT_STATUS in config.stash:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def cfg(workdir):
    """The embedded default, redirected into the session's temporary folder, with random
    tiny models (tests/overrides.py says why), a 48-video corpus (`make train` uses 256) and shorter completions, to
    keep `make test` inside its time budget; the tiny models are built (once) here."""
    from config import load_config
    from tests.overrides import TEST_MODELS
    from tiny.build import with_tiny_models

    return with_tiny_models(load_config("cpu_tiny", [
        f"paths.workdir={workdir}", f"paths.model_cache={workdir / 'models'}",
        *TEST_MODELS, "corpus.synth.num_videos=48", "rollout.sampling.max_tokens=96",
    ]))


@pytest.fixture(scope="session")
def model_dirs(cfg):
    from models.loading import model_dirs

    return model_dirs(cfg)


@pytest.fixture(scope="session")
def synth(cfg, workdir):
    from corpus.synth import generate_corpus

    return generate_corpus(cfg.corpus.synth, workdir / "corpus")


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray cluster for one test module (2 logical CPUs, like CI)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()
