"""`kedro viz run` serves the project's pipelines with one namespace per category."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    """A free port below 49152 (kedro viz refuses the ephemeral range)."""
    for port in random.Random().sample(range(20000, 49000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def test_viz_shows_one_namespace_per_demo_category():
    port = _free_port()
    kedro = Path(sys.executable).parent / "kedro"
    process = subprocess.Popen(
        [str(kedro), "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
    )
    try:
        deadline = time.monotonic() + 180
        payload = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/main", timeout=5) as response:
                    payload = json.load(response)
                break
            except OSError:
                time.sleep(1)
        assert payload is not None, process.stdout.read().decode(errors="replace")[-3000:] if process.poll() is not None else "viz did not answer"
        namespaces = set(payload["modular_pipelines"])
        assert {"brick", "grass", "gravel"} <= namespaces
        node_names = {node["name"] for node in payload["nodes"]}
        assert {"train", "fit_density", "evaluate", "build_detection_report"} <= node_names
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
