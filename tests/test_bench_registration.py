"""benchmarks/bench_registration.py on a tiny folder of a part that turns and changes apparent size."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "core"))

from bench_registration import main  # noqa: E402
from test_register import _plate  # noqa: E402

from cutpaste.core.register import warp  # noqa: E402


def test_the_zoom_search_lines_up_parts_of_varying_size_better_than_a_rigid_transform(tmp_path):
    rng = np.random.default_rng(0)
    poses = np.stack([rng.uniform(-20, 20, 6), rng.uniform(-2, 2, 6), rng.uniform(-2, 2, 6), np.log(rng.uniform(0.9, 1.1, 6))], 1)
    folder = tmp_path / "data" / "part" / "train" / "good"
    folder.mkdir(parents=True)
    for index, image in enumerate(warp(np.repeat(_plate(64)[None], 6, 0), poses)):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    table = main(["--data-root", str(tmp_path / "data"), "--category", "part", "--image-size", "64", "--max-rotation-deg", "30",
                  "--work-size", "32", "--out", str(tmp_path / "out")])
    assert table["setting"].tolist() == ["rigid", "refine", "zoom", "zoom + refine"]
    assert table.loc[0, "edge_spread_ratio"] == 1.0 and (tmp_path / "out" / "registration.csv").is_file()
    zoom = table.set_index("setting").loc["zoom", "edge_spread_ratio"]
    assert zoom < 0.8, table
    with pytest.raises(FileNotFoundError, match="train/good"):
        main(["--data-root", str(tmp_path / "data"), "--category", "missing", "--out", str(tmp_path / "out")])
