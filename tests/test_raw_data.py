"""Where the raw data comes from: the demo generator, or a real MVTec-layout folder."""

import pytest

from cutpaste.core.data import DatasetError
from cutpaste.pipelines.detection.nodes import prepare_raw_data

DEMO = {"generate": True, "seed": 0, "crop_size": 64, "n_train": 4, "n_test_good": 2, "n_test_defect": 2}


def test_a_demo_folder_left_empty_is_generated_again_and_real_data_is_never_touched(tmp_path):
    empty = tmp_path / "brick" / "train" / "good"
    empty.mkdir(parents=True)  # what `find data -type f -delete` leaves behind
    assert prepare_raw_data("brick", str(tmp_path), DEMO) == str(tmp_path)
    assert len(list(empty.glob("*.png"))) == 4 and (tmp_path / "brick" / "demo_manifest.json").is_file()

    real = tmp_path / "grass" / "train" / "good"
    real.mkdir(parents=True)
    (real / "mine.png").write_bytes(b"a user's own image")
    prepare_raw_data("grass", str(tmp_path), DEMO)
    assert [path.name for path in real.iterdir()] == ["mine.png"]  # a folder with files and no manifest is real data

    with pytest.raises(DatasetError, match="category folder not found"):
        prepare_raw_data("widget", str(tmp_path), DEMO)
