
import pyarrow.parquet as pq
from typer.testing import CliRunner

from cli.main import app
from tests.overrides import TEST_MODELS

runner = CliRunner()


def test_help_lists_subcommands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for name in ("train", "corpus", "models", "bench", "doctor", "config"):
        assert name in out.output


def test_config_error_exits_2_and_names_the_key():
    out = runner.invoke(app, ["config", "rollout.group_sise=3"])
    assert out.exit_code == 2
    assert "rollout.group_sise" in out.output


def test_config_prints_overrides():
    out = runner.invoke(app, ["config", "rollout.group_size=3"])
    assert out.exit_code == 0 and "group_size: 3" in out.output


def test_corpus_synth_and_models_tiny(tmp_path):
    args = [f"paths.workdir={tmp_path}", f"paths.model_cache={tmp_path / 'm'}",
            "corpus.synth.num_videos=6", *TEST_MODELS]
    out = runner.invoke(app, ["corpus", "synth", *args])
    assert out.exit_code == 0, out.output
    assert pq.read_table(tmp_path / "corpus" / "videos.parquet").num_rows == 6
    out = runner.invoke(app, ["models", "tiny", *args])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "m" / "tiny-qwen3vl-policy" / "config.json").is_file()


def test_another_python_is_told_to_use_the_projects_environment():
    import subprocess
    import sys
    from pathlib import Path

    # -S: no site-packages, as on an interpreter without the project installed
    out = subprocess.run([sys.executable, "-S", "-m", "cli", "train"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 2
    assert "lacks the project's packages" in out.stderr and ".venv" in out.stderr


def test_messages_are_printed_literally(tmp_path):
    """A config error whose text holds brackets and what looks like rich markup."""
    out = runner.invoke(app, ["config", "rollout.group_size=[/red] [start, end]"])
    assert out.exit_code == 2
    assert "[/red] [start, end]" in out.output


def test_malformed_yaml_is_a_config_error_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  sft_steps: 3\n\tgrpo_steps: 2\n")
    out = runner.invoke(app, ["config", "--config", str(bad)])
    assert out.exit_code == 2
    assert str(bad) in out.output and "line 3" in out.output


def test_presets_layer_in_order():
    out = runner.invoke(app, ["config", "-c", "charades_fig", "-c", "local_tiny"])
    assert out.exit_code == 0, out.output
    assert "policy: tiny" in out.output and "source: fig" in out.output
    assert "video_dir: /mnt/cluster_storage/corpora/charades_fig" in out.output


def test_the_installed_script_imports_every_package_from_anywhere(tmp_path):
    """`videosearch` runs outside the repository, where only the packages pyproject.toml
    lists import; a package missing there broke `videosearch train`."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    packages = sorted(p.parent.name for p in root.glob("*/__init__.py") if p.parent.name != "tests")
    assert {"tiny", "actors", "corpus"} <= set(packages)
    out = subprocess.run([sys.executable, "-c", f"import {', '.join(packages)}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
