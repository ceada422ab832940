"""Served-model throughput and latency from a cold start, against batch scoring in one process, and
the server's peak memory under the largest allowed request; measured in one run, loopback only.

For each client count a fresh ``mlflow models serve`` starts on 127.0.0.1; once it answers /ping, the
clients are released together and each sends its share of ``--requests`` requests of
``--images-per-request`` images (the files of ``--input-dir``, round robin). Then one more fresh server
gets the largest request the limits allow (``max_images`` images of ``max_pixels`` pixels each, PNG);
its peak resident memory (VmHWM of the server's processes, from /proc) is printed. Linux only.

    python benchmarks/bench_serving.py --detector data/06_models/brick/detector --input-dir data/01_raw/demo/brick/test
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cutpaste.core.data import read_image
from cutpaste.core.detector import Detector, list_images
from cutpaste.processes import free_port, stop_process_group, wait_until_answers
from cutpaste.serving import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS, encode_image_file, save_pyfunc

BIN_DIR = Path(sys.executable).parent


def start_server(model_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN_DIR / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if wait_until_answers(process, f"http://127.0.0.1:{port}/ping", timeout_s=180) is not None:
        return process
    if process.poll() is not None:
        raise RuntimeError(f"server exited with {process.returncode} before answering /ping")
    stop_process_group(process)
    raise RuntimeError("server did not answer /ping within 180 s")


def group_peak_rss_mb(pgid: int) -> dict[str, float]:
    """Peak resident set (VmHWM, MB) of each process of process group ``pgid``, by command name."""
    peaks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[f"{name}[{entry.name}]"] = int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            continue
    return peaks


def post(port: int, body: bytes, timeout: float = 600) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def load_run(model_dir: Path, payloads: list[bytes], clients: int, requests: int, images_per_request: int) -> dict:
    """One cold server, ``clients`` concurrent clients, ``requests`` requests in all."""
    port = free_port()
    process = start_server(model_dir, port)
    barrier = threading.Barrier(clients)
    share = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(index: int) -> list[tuple[float, int]]:
        barrier.wait()
        results = []
        for k in range(share[index]):
            start = time.perf_counter()
            status, _ = post(port, payloads[(index + k * clients) % len(payloads)])
            results.append((time.perf_counter() - start, status))
        return results

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = [r for batch in pool.map(client, range(clients)) for r in batch]
        wall = time.perf_counter() - start
        alive = process.poll() is None
    finally:
        stop_process_group(process)
    latencies = np.array([seconds for seconds, _ in results]) * 1000
    ok = sum(status == 200 for _, status in results)
    return {"clients": clients, "requests": len(results), "ok": ok, "img_s": ok * images_per_request / wall,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)), "alive": alive}


def largest_request_memory(model_dir: Path, source: Path, max_pixels: int, max_images: int) -> tuple[dict, dict, float, int]:
    """(peak RSS MB per server process after start, the same after the largest allowed request, seconds, HTTP status)."""
    side = int(max_pixels**0.5)
    buffer = io.BytesIO()
    read_image(source).convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(buffer, "PNG", compress_level=1)
    text = base64.b64encode(buffer.getvalue()).decode()
    body = json.dumps({"dataframe_records": [{"name": f"big-{i}.png", "image": text} for i in range(max_images)]}).encode()
    port = free_port()
    process = start_server(model_dir, port)
    try:
        idle = group_peak_rss_mb(process.pid)
        start = time.perf_counter()
        status, _ = post(port, body)
        seconds = time.perf_counter() - start
        peak = group_peak_rss_mb(process.pid)
    finally:
        stop_process_group(process)
    print(f"largest allowed request: {max_images} PNGs of {side} x {side} = {side * side / 1e6:.1f} Mpx "
          f"({len(buffer.getvalue()) / 1e6:.1f} MB each, request body {len(body) / 1e6:.0f} MB)")
    return idle, peak, seconds, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", required=True, help="a detector folder (Detector.save)")
    parser.add_argument("--input-dir", required=True, help="images to send (any size; decoded per request)")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--requests", type=int, default=96, help="requests per client count, all clients together")
    parser.add_argument("--images-per-request", type=int, default=4)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES)
    parser.add_argument("--skip-memory", action="store_true", help="skip the largest-request memory measurement")
    args = parser.parse_args()

    files = list_images(args.input_dir)
    n = args.images_per_request
    payloads = [json.dumps({"dataframe_records": [{"name": f.name, "image": encode_image_file(f)} for f in files[i : i + n]]}).encode()
                for i in range(0, len(files) - n + 1, n)]
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder) / "pyfunc"
        save_pyfunc(args.detector, model_dir, max_pixels=args.max_pixels, max_images=args.max_images)

        detector = Detector.load(args.detector)
        batch_files = [files[i % len(files)] for i in range(max(len(files), 64))]
        detector.score_files(batch_files[:8], progress=False)  # warm-up
        start = time.perf_counter()
        detector.score_files(batch_files, progress=False)
        batch_img_s = len(batch_files) / (time.perf_counter() - start)

        rows = [load_run(model_dir, payloads, int(c), args.requests, n) for c in args.clients.split(",")]
        print(f"{detector.category} at {detector.image_size} px ({detector.precision}), {n} images per request, "
              f"{os.cpu_count()} CPUs; each client count on a cold server")
        print(f"{'clients':>7} {'requests':>8} {'ok':>4} {'img/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'vs batch':>8}  alive")
        for row in rows:
            print(f"{row['clients']:>7} {row['requests']:>8} {row['ok']:>4} {row['img_s']:>7.1f} {row['p50_ms']:>7.0f} "
                  f"{row['p99_ms']:>7.0f} {row['img_s'] / batch_img_s:>8.2f}  {row['alive']}")
        print(f"batch scoring in one process (Detector.score_files, {len(batch_files)} files): {batch_img_s:.1f} img/s")
        if not args.skip_memory:
            idle, peak, seconds, status = largest_request_memory(model_dir, files[0], args.max_pixels, args.max_images)
            print(f"largest request answered HTTP {status} in {seconds:.1f} s; server peak RSS (VmHWM) per process:")
            for name, after in peak.items():
                print(f"  {name}: {idle.get(name, float('nan')):.0f} MB after start and warm-up, {after:.0f} MB after the largest request")


if __name__ == "__main__":
    main()
