"""Local helper processes (servers started by the engine, the tests and the benchmarks): a port to give
them and a way to stop them with their workers."""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768 up): a client polling a port there before the
    server listens can connect to itself and read its own request back (kedro viz also refuses 49152 up)."""
    for port in random.Random().sample(range(20000, 32700), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32700")


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and its whole group (workers included):
    SIGTERM, then SIGKILL after ``timeout_s``."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until_answers(process: subprocess.Popen, url: str, timeout_s: float, interval_s: float = 0.5) -> bytes | None:
    """GET ``url`` until it answers; its body, or None when ``process`` exits or ``timeout_s`` passes first.
    A refused connection or a reply that is not HTTP yet both mean "not ready"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except (OSError, http.client.HTTPException):
            time.sleep(interval_s)
    return None
