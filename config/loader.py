"""Preset + overrides -> a validated, typed `Config`."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from config.checks import problems
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


def load_config(preset: str | Path | list | tuple | None = "cpu_tiny",
                overrides: list[str] = ()) -> Config:
    """Merge schema defaults <- presets (in order, each after the presets it `extends`) <-
    `key=value` overrides, type- and range-checked; every failure is a ConfigError naming the
    file or override and the key."""
    merged = OmegaConf.structured(Config)
    presets = [] if preset is None else [preset] if isinstance(preset, str | Path) else preset
    for name in presets:
        merged = _apply_preset(merged, name, ())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
            raise ConfigError(f"unknown config key {key!r} (override {item!r})")
        try:
            parsed = OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({str(exc).splitlines()[0]})") from None
        merged = _merge(merged, parsed, f"override {item!r}", key)
    cfg = OmegaConf.to_object(merged)
    bad = problems(cfg)
    if bad:
        raise ConfigError("config values out of range:\n  " + "\n  ".join(bad))
    cfg.paths.workdir = _absolute(cfg.paths.workdir)
    cfg.paths.model_cache = _absolute(cfg.paths.model_cache)
    if cfg.corpus.video_dir:
        cfg.corpus.video_dir = _absolute(cfg.corpus.video_dir)
    return cfg


def _apply_preset(merged: DictConfig, preset: str | Path, chain: tuple[Path, ...]) -> DictConfig:
    """A preset's top-level `extends: <preset>` is applied first: the FIG presets share the
    paper's cluster setup, `cpu_tiny` shares the CPU settings of `local_tiny`."""
    path = _preset_path(preset)
    if path in chain:
        raise ConfigError(f"{path}: 'extends' loops: {' -> '.join(map(str, (*chain, path)))}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as exc:  # its text names the line and column
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, "
                          f"not a {type(loaded).__name__}")
    parent = loaded.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: 'extends' must name one preset, got {parent!r}")
        if Path(parent).suffix in (".yaml", ".yml"):  # a file next to this one
            parent = path.parent / parent
        merged = _apply_preset(merged, parent, (*chain, path))
    return _merge(merged, loaded, str(path))


def _merge(base: DictConfig, layer: DictConfig, source: str, key: str | None = None) -> DictConfig:
    """base <- layer; a type mismatch (a scalar where a section belongs, text for a number)
    names the key, from OmegaConf's error or else the override's own."""
    try:
        return OmegaConf.merge(base, layer)
    except (OmegaConfBaseException, TypeError) as exc:
        where = getattr(exc, "full_key", None) or key or _first_mismatch(base, layer) or "?"
        detail = getattr(exc, "msg", None) or str(exc)
        raise ConfigError(f"bad config value for {where!r} in {source}: {detail}") from None


def _first_mismatch(base: DictConfig, layer: DictConfig, prefix: str = "") -> str | None:
    """The first key where the layer gives a scalar for a section or a section for a scalar."""
    for k, v in layer.items():
        if k not in base:
            continue
        here, other = base[k], v
        if isinstance(here, DictConfig) != isinstance(other, DictConfig):
            return prefix + str(k)
        if isinstance(here, DictConfig):
            found = _first_mismatch(here, other, f"{prefix}{k}.")
            if found:
                return found
    return None


def _absolute(path: str) -> str:
    """Actors and submitted jobs run in other directories: paths travel absolute."""
    return str(Path(path).expanduser().absolute())


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
