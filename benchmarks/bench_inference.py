"""Scoring throughput of a trained detector on a folder of images (read, decode, resize, features,
GDE, decision), measured in one run.

    python benchmarks/bench_inference.py --detector data/06_models/brick/detector --input-dir data/01_raw/demo/brick/test
"""

from __future__ import annotations

import argparse
import time

from cutpaste.core.detector import Detector, list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", required=True)
    parser.add_argument("--input-dir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    detector = Detector.load(args.detector)
    files = list_images(args.input_dir)
    detector.score_files(files[:8], progress=False)  # warm-up
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        table = detector.score_files(files, progress=False)
        timings.append(time.perf_counter() - start)
    best = min(timings)
    print(f"{detector.category}: {len(files)} files at {detector.image_size} px ({detector.precision}), "
          f"best of {args.repeats}: {best:.2f} s = {len(files) / best:.1f} images/s; "
          f"{int((table['decision'] == 'anomalous').sum())} flagged, {int((table['error'] != '').sum())} unreadable")


if __name__ == "__main__":
    main()
