"""Profiles (YAML parameter files) and command-line overrides, resolved over the defaults."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from helpers.core.errors import ConfigError
from helpers.core.params import defaults as params_defaults
from helpers.core.paths import PROFILES_DIR


def profile_path(name: str) -> Path:
    """Path of the profile called `name` (profiles/<name>.yaml)."""
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"--profile {name!r}: no file {path} (known profiles: {known})")
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path`, with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"parameter file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping of parameter names to values")
    return data


def defaults() -> dict[str, Any]:
    """Every known parameter and its default value: the declarations of helpers.core.params (the default profile)."""
    return params_defaults()


def parse_value(name: str, text: str, default: Any) -> Any:
    """A command-line string turned into the parameter's type (lists accept `a,b,c`)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(default, list) and not isinstance(value, list):
        value = [yaml.safe_load(v) for v in str(text).split(",") if v.strip()] if isinstance(value, str) else [value]
    if isinstance(default, bool) or isinstance(value, bool):
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, str) and value is not None and not isinstance(value, str):
        return str(text)
    return value


def write_params(params: dict[str, Any], path: str | Path) -> None:
    """Write the resolved parameters as YAML."""
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
