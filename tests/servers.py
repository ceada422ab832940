"""Starting and stopping the servers that tests talk to (kedro viz, mlflow models serve, mlflow server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cutpaste.processes import (
    free_port,  # below the ephemeral range (see its docstring)
    wait_until_answers,
)
from cutpaste.processes import stop_process_group as stop

BIN_DIR = Path(sys.executable).parent

__all__ = ["BIN_DIR", "free_port", "start", "start_tracking_server", "stop", "wait_for"]


def start(command: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """Start a server in its own process group, with this interpreter's bin folder on PATH."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(process: subprocess.Popen, url: str, timeout: float = 180) -> bytes:
    """GET ``url`` until it answers; fails with the server's output if it dies or never answers."""
    body = wait_until_answers(process, url, timeout, interval_s=1)
    if body is not None:
        return body
    output = process.stdout.read().decode(errors="replace")[-3000:] if process.poll() is not None else "(still running)"
    raise AssertionError(f"{url} did not answer within {timeout} s: {output}")


def start_tracking_server(folder) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and a served artifact root (as the README starts it)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = start([str(BIN_DIR / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                     "--backend-store-uri", f"sqlite:///{folder / 'tracking.db'}", "--artifacts-destination", str(folder / "artifacts")])
    uri = f"http://127.0.0.1:{port}"
    wait_for(process, f"{uri}/health")
    return process, uri
