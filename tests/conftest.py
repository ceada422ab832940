import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    """A throw-away copy of the project's configuration (the package itself is imported as
    installed), with its own data folder and MLflow store; the working directory is its root."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    (root / "data").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root
