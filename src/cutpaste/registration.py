"""What the pipelines are built for, read when Kedro registers them.

Kedro builds its pipeline registry apart from any run: ``kedro registry list``, ``kedro viz`` and the
Airflow DAG generator read it without running anything, and ``kedro run`` builds it before the run's
parameters exist. So the *structure* of the pipelines (which categories, which proxy tasks and seeds,
whether the t-SNE node exists) comes from configuration files alone, read here with Kedro's public
``OmegaConfigLoader`` for one environment:

* ``conf/<env>/categories.yml``: ``categories``, a list of category folder names, or ``auto`` for every
  folder with ``train/good`` under the parameter ``data_root``;
* ``parameters*.yml``: ``data_root`` (for ``auto``), ``tsne.enabled``, ``study`` (the variants grid) and
  ``cifar`` (classes and proxy tasks).

The environment is ``KEDRO_ENV`` when set (Kedro's own variable: ``kedro run`` reads it, and the project's
:class:`cutpaste.hooks.RunEnvironmentHook` sets it from ``--env`` before the registry is built), else
``local`` over ``base``. Runtime ``--params`` change what the nodes receive, never which nodes exist:
select categories at run time with ``--namespaces=brick,grass``.

A settings mistake breaks only the pipeline it belongs to (:func:`guarded`): the registry still holds every
other pipeline, and running the broken one fails at once with the message.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.pipeline import Pipeline, node

from cutpaste.core.config import as_list

logger = logging.getLogger(__name__)

CATEGORIES_FILE = "categories.yml"


class PipelineSettingsError(ValueError):
    """A setting that a pipeline's structure depends on is missing or wrong."""


@dataclass(frozen=True)
class RegistrationConfig:
    """The configuration the pipelines are built from: ``env`` (its name), ``parameters`` (merged
    ``parameters*.yml``) and ``categories`` (resolved: ``auto`` already discovered)."""

    env: str
    project_path: Path
    parameters: dict[str, Any]
    categories: list[str]


def project_path() -> Path:
    """The Kedro project folder: ``CUTPASTE_PROJECT_PATH`` when set, else the nearest folder at or above
    the working directory whose ``pyproject.toml`` has a ``[tool.kedro]`` table."""
    if os.environ.get("CUTPASTE_PROJECT_PATH"):
        return Path(os.environ["CUTPASTE_PROJECT_PATH"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.kedro]" in pyproject.read_text(encoding="utf-8", errors="replace"):
            return folder
    return here


def config_loader(env: str | None = None, path: Path | None = None):
    """Kedro's ``OmegaConfigLoader`` over the project's ``conf/``, set up as ``settings.py`` sets up Kedro's own."""
    from kedro.config import OmegaConfigLoader

    from cutpaste import settings  # the project's own settings module: usable before Kedro configures the project

    path = project_path() if path is None else path
    arguments = dict(settings.CONFIG_LOADER_ARGS)
    arguments.setdefault("base_env", "base")
    arguments.setdefault("default_run_env", "local")
    conf_source = getattr(settings, "CONF_SOURCE", "conf")
    return OmegaConfigLoader(conf_source=str(path / conf_source), env=env or os.environ.get("KEDRO_ENV") or None, **arguments)


def categories_from(loader, parameters: dict[str, Any] | None = None, path: Path | None = None) -> list[str]:
    """The categories of ``categories.yml`` (a list, a string separated by ";", or ``auto``)."""
    from kedro.config import MissingConfigException

    try:
        listed = dict(loader["categories"]).get("categories")
    except MissingConfigException:
        listed = None
    if listed is None:
        raise PipelineSettingsError(f"conf/<env>/{CATEGORIES_FILE}: no 'categories' (a list of category folders, or auto)")
    if isinstance(listed, str) and listed.strip().lower() != "auto":
        listed = as_list(listed)
    if isinstance(listed, str):  # auto: discover under data_root
        from cutpaste.core.data import DatasetError, discover_categories

        parameters = dict(loader["parameters"]) if parameters is None else parameters
        root = Path(str(parameters.get("data_root", "")))
        if not root.is_absolute():
            root = (project_path() if path is None else path) / root
        try:
            return discover_categories(root)
        except DatasetError as error:
            raise PipelineSettingsError(f"{CATEGORIES_FILE}: categories is auto, but {error}") from error
    names = [str(name) for name in listed]
    if not names or len(set(names)) != len(names) or any(not name or "." in name for name in names):
        raise PipelineSettingsError(f"{CATEGORIES_FILE}: categories must be distinct folder names without dots, got {names}")
    return names


def load(env: str | None = None, path: Path | None = None) -> RegistrationConfig:
    """Read the configuration the pipelines are built from (see the module docstring)."""
    path = project_path() if path is None else path
    loader = config_loader(env, path)
    parameters = dict(loader["parameters"])
    return RegistrationConfig(env=loader.env or "local", project_path=path, parameters=parameters,
                              categories=categories_from(loader, parameters, path))


def guarded(name: str) -> Callable[[Callable[..., Pipeline]], Callable[..., Pipeline]]:
    """Decorate a pipeline package's ``create_pipeline``: a settings mistake logs a warning and yields a
    one-node pipeline that raises :class:`PipelineSettingsError` with the message when it runs, so every
    other pipeline stays usable and the broken one says what is wrong."""

    def decorate(create: Callable[..., Pipeline]) -> Callable[..., Pipeline]:
        @functools.wraps(create)
        def create_pipeline(**kwargs) -> Pipeline:
            try:
                return create(**kwargs)
            except Exception as error:  # a settings mistake must not take the other pipelines down
                message = f"pipeline '{name}' cannot be built from the configuration: {error}"
                logger.warning("%s (the other pipelines are unaffected)", message)
                return settings_error_pipeline(name, message)

        return create_pipeline

    return decorate


def settings_error_pipeline(name: str, message: str) -> Pipeline:
    """A pipeline whose only node raises :class:`PipelineSettingsError` (``message``)."""

    def check_settings() -> None:
        raise PipelineSettingsError(message)

    for attribute in ("__name__", "__qualname__"):
        setattr(check_settings, attribute, f"check_{name}_settings")
    return Pipeline([node(check_settings, None, f"{name}_settings_error", name=f"{name}_settings_check")])
