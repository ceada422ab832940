"""The run's parameters, available when pipelines are built (which categories to instantiate).

Kedro builds pipelines after it has created the context; :class:`cutpaste.hooks.ProjectParamsHook`
records the parameters (config of the chosen env merged with ``--params``) here first. Outside a
session (e.g. ``kedro registry list``) the base/local config is read directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cutpaste.core.config import as_list

_recorded: dict[str, dict[str, Any]] = {}


def set_params(params: dict[str, Any]) -> bool:
    """Record the run's parameters; True when they differ from what was recorded before."""
    changed = "current" in _recorded and _recorded["current"] != params
    _recorded["current"] = dict(params)
    return changed


def get_params() -> dict[str, Any]:
    if "current" in _recorded:
        return _recorded["current"]
    from kedro.config import OmegaConfigLoader

    conf_source = Path(os.environ.get("CUTPASTE_PROJECT_PATH", Path.cwd())) / "conf"
    loader = OmegaConfigLoader(conf_source=str(conf_source), base_env="base", default_run_env=os.environ.get("KEDRO_ENV", "local"))
    return dict(loader["parameters"])


def categories(params: dict[str, Any] | None = None) -> list[str]:
    """The categories to build pipelines for: ``categories`` from config (a list, or a string
    separated by ";"), or every category found under ``data_root`` when it is null or "auto"."""
    params = get_params() if params is None else params
    listed = params.get("categories")
    if isinstance(listed, str) and listed != "auto":  # --params=categories=bottle;cable (the CLI splits on commas)
        listed = as_list(listed)
    if listed and listed != "auto":
        return list(listed)
    from cutpaste.core.data import discover_categories

    return discover_categories(params["data_root"])
