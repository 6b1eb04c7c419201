import json

import pytest

from actors.job_checks import check_outputs_outlive_the_job, ray_job_copy
from config import load_config


def test_outside_a_submitted_job_any_workdir_is_fine(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert ray_job_copy() is None
    check_outputs_outlive_the_job(load_config("cpu_tiny"))  # runs/cpu_tiny under the cwd


def test_a_submitted_job_refuses_outputs_inside_rays_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}))
    monkeypatch.chdir(tmp_path)
    assert ray_job_copy() == tmp_path
    with pytest.raises(ValueError, match=r"paths.workdir is .*Ray's temporary copy.*absolute"):
        check_outputs_outlive_the_job(load_config("cpu_tiny"))  # relative: lands in the copy
    check_outputs_outlive_the_job(load_config("cpu_tiny", [f"paths.workdir={tmp_path.parent}/w"]))
