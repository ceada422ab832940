"""`kedro viz run` serves the project's pipelines with one namespace per category."""

import json

import pytest
import servers
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_viz_shows_one_namespace_per_demo_category():
    port = servers.free_port()
    process = servers.start([str(servers.BIN_DIR / "kedro"), "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)], cwd=PROJECT_ROOT)
    try:
        payload = json.loads(servers.wait_for(process, f"http://127.0.0.1:{port}/api/main"))
    finally:
        servers.stop(process)
    assert {"brick", "grass", "gravel"} <= set(payload["modular_pipelines"])
    node_names = {node["name"] for node in payload["nodes"]}
    assert {"train", "fit_density", "evaluate", "calibrate_threshold", "build_detection_report"} <= node_names
