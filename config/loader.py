"""Preset + overrides -> a validated, typed `Config`."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from config.schema import Config

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A preset or override that does not fit the schema; the message names the key."""


def _preset_path(preset: str | Path) -> Path:
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"config preset not found: {path} (presets: {known})")
    return path


def load_config(preset: str | Path | None = "cpu_tiny", overrides: list[str] = ()) -> Config:
    """Merge schema defaults <- preset YAML <- `key=value` overrides, type-checked."""
    merged = OmegaConf.structured(Config)
    try:
        if preset is not None:
            path = _preset_path(preset)
            try:
                loaded = OmegaConf.load(path)
            except yaml.YAMLError as exc:  # its text names the line and column
                raise ConfigError(f"{path} is not valid YAML: {exc}") from None
            merged = OmegaConf.merge(merged, loaded)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, value = item.split("=", 1)
            if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
                raise ConfigError(f"unknown config key {key!r} (override {item!r})")
            try:
                parsed = OmegaConf.from_dotlist([item])
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {item!r}: the value is not valid YAML "
                                  f"({str(exc).splitlines()[0]})") from None
            merged = OmegaConf.merge(merged, parsed)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"bad config value for {key!r}: {exc.msg}") from None
    cfg = OmegaConf.to_object(merged)
    cfg.paths.workdir = _absolute(cfg.paths.workdir)
    cfg.paths.model_cache = _absolute(cfg.paths.model_cache)
    return cfg


def _absolute(path: str) -> str:
    """Actors and submitted jobs run in other directories: paths travel absolute."""
    return str(Path(path).expanduser().absolute())


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
