import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_CATEGORIES = ["brick", "gravel"]


def make_project_copy(root: Path) -> Path:
    """A throw-away copy of the project's configuration (the package itself is imported as
    installed) with its own data folder."""
    root.mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    (root / "data").mkdir()
    return root


def run_kedro(project: Path, env: str = "test", runtime_params: dict | None = None, tracking_uri: str | None = None, **run_kwargs):
    """One ``kedro run`` through a KedroSession, MLflow tracking into ``<project>/mlflow.db`` (or ``tracking_uri``)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    previous_cwd, previous_uri, previous_env = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("KEDRO_ENV")
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri or f"sqlite:///{project / 'mlflow.db'}"
    try:
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
            return session.run(**run_kwargs)
    finally:
        os.chdir(previous_cwd)
        for name, value in (("MLFLOW_TRACKING_URI", previous_uri), ("KEDRO_ENV", previous_env)):  # the run's hooks set KEDRO_ENV
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def project_copy(tmp_path):
    return make_project_copy(tmp_path / "project")


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """The default pipeline run once at tiny size (conf/test) on two demo categories."""
    project = make_project_copy(tmp_path_factory.mktemp("trained") / "project")
    run_kedro(project)  # conf/test/categories.yml: TINY_CATEGORIES
    return project
