"""A run's parameters: the default profile <- a named profile <- a file <- -p overrides, validated."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.config.profiles import defaults, parse_value, profile_path, read_yaml
from helpers.config.validation import validate
from helpers.core.errors import ConfigError


def resolve(profile: str | None = "default", param_file: str | Path | None = None,
            overrides: list[tuple[str, str]] | dict[str, Any] | None = None, data: str | None = None,
            run_dir: str | None = None) -> dict[str, Any]:
    """Default profile <- named profile <- parameter file <- -p overrides <- --data/--run-dir, validated."""
    params = defaults()
    known = set(params)
    layers: list[tuple[str, dict[str, Any]]] = []
    if profile and profile != "default":
        layers.append((f"profile {profile}", read_yaml(profile_path(profile))))
    if param_file:
        layers.append((f"file {param_file}", read_yaml(param_file)))
    for origin, layer in layers:
        unknown = sorted(set(layer) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown parameter(s) {', '.join(unknown)}")
        params.update(layer)
    if profile and profile != "default":
        params["profile"] = profile
        if "run_dir" not in layers[0][1]:
            params["run_dir"] = f"runs/{profile}"
    items = overrides.items() if isinstance(overrides, dict) else (overrides or [])
    for name, text in items:
        if name not in known:
            raise ConfigError(f"-p {name}: unknown parameter (known: {', '.join(sorted(known))})")
        params[name] = parse_value(name, text, params[name]) if isinstance(text, str) else text
    if data is not None:
        params["data_path"] = str(data)
    if run_dir is not None:
        params["run_dir"] = str(run_dir)
    validate(params)
    return params
