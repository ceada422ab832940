"""The localization nodes: the patch density sees the fit split, the normalisation the calibration split only."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cutpaste.core.aligned import aligned_object_dataset
from cutpaste.core.localize import normalization_statistics
from cutpaste.core.models import CutPasteNet
from cutpaste.pipelines.detection.nodes import split_training_images as detection_split
from cutpaste.pipelines.localization import nodes

LOCALIZATION = {
    "train_patch_size": 128, "extract_patch_size": 128, "stride": 64, "sigma": 8.0, "batch_size": 256,
    "per_location_categories": ["aligned"], "normalize": True, "normalize_statistic": "log_ratio",
    "density": {"floor_ratio": 0.1, "max_rank": 128, "storage_dtype": "float16"},
    "training": {"device": "cpu", "precision": "fp32", "memory_format": "auto", "progress": False},
}
MODEL = {"backbone": "resnet18", "head_dims": [8]}
DENSITY = {"shrinkage": "ledoit_wolf", "l2_normalize": True}


def _dataset():
    data = aligned_object_dataset(size=32, n_train=14, n_test_good=2, n_test_defect=3)
    return {"category": "aligned", "image_size": 32, **{key: data[key] for key in ("train_images", "test_images", "test_masks")}}


def test_normalisation_statistics_come_from_the_calibration_images_alone():
    torch.manual_seed(0)
    state_dict = CutPasteNet(num_classes=3, head_dims=(8,)).state_dict()
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    assert len(split["calibration"]) == 5 and not set(split["fit"]) & set(split["calibration"])
    localizer = nodes.fit_localizer(state_dict, dataset, split, MODEL, LOCALIZATION, DENSITY)
    assert localizer.density.per_location and localizer.density.grid_ == 3
    reference = normalization_statistics(localizer.score_grids(dataset["train_images"][split["calibration"]]), "log_ratio")
    np.testing.assert_allclose(localizer.norm_center, reference[0], rtol=1e-6)
    np.testing.assert_allclose(localizer.norm_scale, reference[1], rtol=1e-6)

    changed = {**dataset, "test_images": 255 - dataset["test_images"], "test_masks": 1 - dataset["test_masks"]}
    again = nodes.fit_localizer(state_dict, changed, split, MODEL, LOCALIZATION, DENSITY)
    np.testing.assert_array_equal(again.norm_center, localizer.norm_center)
    np.testing.assert_array_equal(again.density.means_, localizer.density.means_)

    # a calibration image does change them, a fit image changes the density
    for index, attribute in ((split["calibration"][0], "norm_center"), (split["fit"][0], None)):
        images = dataset["train_images"].copy()
        images[index] = 255 - images[index]
        other = nodes.fit_localizer(state_dict, {**dataset, "train_images": images}, split, MODEL, LOCALIZATION, DENSITY)
        if attribute:
            np.testing.assert_array_equal(other.density.means_, localizer.density.means_)
            assert not np.allclose(other.norm_center, localizer.norm_center)
        else:
            assert not np.allclose(other.density.means_, localizer.density.means_)

    maps, raw, patch, _ = nodes.score_maps(localizer, dataset, LOCALIZATION)
    assert maps.shape == raw.shape == (5, 32, 32)
    np.testing.assert_array_equal(maps, patch)  # no stem: the maps are the patch maps
    np.testing.assert_allclose(raw, localizer.score_maps(dataset["test_images"], normalized=False), rtol=1e-5)
    assert not np.allclose(maps, raw)
    off = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**LOCALIZATION, "normalize": False}, DENSITY)
    assert not off.normalized


def _fused_localizer():
    """A fused localizer fitted through the node on the tiny dataset: (state_dict, dataset, split, settings, localizer)."""
    torch.manual_seed(0)
    state_dict = CutPasteNet(num_classes=3, head_dims=(8,)).state_dict()
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    settings = {**LOCALIZATION, "stem": {"fuse": True, "max_vectors": 10**6, "seed": 0}}
    localizer = nodes.fit_localizer(state_dict, dataset, split, MODEL, settings, DENSITY)
    return state_dict, dataset, split, settings, localizer


def test_fused_maps_fit_the_stem_on_the_fit_split_and_their_references_on_the_calibration_split(tmp_path):
    from cutpaste.core.localize import Localizer

    state_dict, dataset, split, settings, localizer = _fused_localizer()
    assert localizer.fused and localizer.fusion == "max"
    assert set(localizer.fusion_references) == {"patch", "stem", "patch_mean", "patch_sd", "stem_mean", "stem_sd", "patch_image_max", "stem_image_max"}
    calibration = dataset["train_images"][split["calibration"]]
    calibration_patch = localizer.maps_from_grids(localizer.score_grids(calibration))
    calibration_stem = localizer.stem_maps(calibration)
    assert localizer.fusion_references["patch"] == np.quantile(calibration_patch, 0.99)
    assert localizer.fusion_references["stem"] == np.quantile(calibration_stem, 0.99)
    np.testing.assert_allclose([localizer.fusion_references[key] for key in ("patch_mean", "patch_sd", "stem_mean", "stem_sd")],
                               [calibration_patch.mean(), calibration_patch.std(), calibration_stem.mean(), calibration_stem.std()], rtol=1e-5, atol=1e-5)

    maps, raw, patch, _ = nodes.score_maps(localizer, dataset, settings)
    stem = localizer.stem_maps(dataset["test_images"])
    np.testing.assert_allclose(maps, np.maximum(patch - localizer.fusion_references["patch"], stem - localizer.fusion_references["stem"]), rtol=1e-6)
    np.testing.assert_allclose(localizer.score_maps(dataset["test_images"]), maps, rtol=1e-5, atol=1e-5)

    # test images change neither the stem density nor the references; a fit image changes the stem density
    changed = {**dataset, "test_images": 255 - dataset["test_images"]}
    again = nodes.fit_localizer(state_dict, changed, split, MODEL, settings, DENSITY)
    assert again.fusion_references == localizer.fusion_references
    np.testing.assert_array_equal(again.stem.mean_, localizer.stem.mean_)
    images = dataset["train_images"].copy()
    images[split["fit"][0]] = 255 - images[split["fit"][0]]
    other = nodes.fit_localizer(state_dict, {**dataset, "train_images": images}, split, MODEL, settings, DENSITY)
    assert not np.allclose(other.stem.mean_, localizer.stem.mean_)

    localizer.save(tmp_path / "localizer")
    loaded = Localizer.load(tmp_path / "localizer")
    assert loaded.fused and loaded.fusion_references == localizer.fusion_references
    np.testing.assert_allclose(loaded.score_maps(dataset["test_images"]), maps, rtol=1e-5, atol=1e-5)
    unfused = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "normalize_statistic": "mean_std"}, DENSITY)
    assert not unfused.fused  # fusion reads maps in log2 units: not with mean_std maps


def test_zsum_fusion_adds_the_two_maps_z_scores_under_the_calibration_pixels_and_round_trips(tmp_path):
    import json

    import pytest

    from cutpaste.core.localize import Localizer

    torch.manual_seed(0)
    state_dict = CutPasteNet(num_classes=3, head_dims=(8,)).state_dict()
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    settings = {**LOCALIZATION, "stem": {"fuse": True, "max_vectors": 10**6, "seed": 0, "fusion": "zsum"}}
    localizer = nodes.fit_localizer(state_dict, dataset, split, MODEL, settings, DENSITY)
    assert localizer.fusion == "zsum"
    calibration = dataset["train_images"][split["calibration"]]
    calibration_patch = localizer.maps_from_grids(localizer.score_grids(calibration))
    calibration_stem = localizer.stem_maps(calibration)
    maps, _, patch, _ = nodes.score_maps(localizer, dataset, settings)
    stem = localizer.stem_maps(dataset["test_images"])
    expected = ((patch - calibration_patch.mean()) / calibration_patch.std() + (stem - calibration_stem.mean()) / calibration_stem.std())
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4)
    # the calibration images' own fused pixels: mean 0 by construction
    assert abs(localizer.fuse(calibration_patch, calibration_stem).mean()) < 1e-3

    localizer.save(tmp_path / "localizer")
    assert json.loads((tmp_path / "localizer/localizer.json").read_text())["fusion"] == "zsum"
    loaded = Localizer.load(tmp_path / "localizer")
    assert loaded.fusion == "zsum"
    np.testing.assert_allclose(loaded.score_maps(dataset["test_images"]), maps, rtol=1e-5, atol=1e-5)

    # a localizer saved before zsum existed: its references hold the 99th percentiles only; it loads as "max"
    meta = json.loads((tmp_path / "localizer/localizer.json").read_text())
    meta.pop("fusion")
    meta["fusion_references"] = {key: meta["fusion_references"][key] for key in ("patch", "stem")}
    (tmp_path / "localizer/localizer.json").write_text(json.dumps(meta))
    old = Localizer.load(tmp_path / "localizer")
    assert old.fusion == "max"
    np.testing.assert_allclose(old.score_maps(dataset["test_images"]),
                               np.maximum(patch - meta["fusion_references"]["patch"], stem - meta["fusion_references"]["stem"]), rtol=1e-5, atol=1e-5)
    old.fusion = "zsum"
    with pytest.raises(ValueError, match="fusion references"):
        old.fuse(patch, stem)
    with pytest.raises(ValueError, match="do not vary"):
        localizer.set_fusion_references(calibration_patch, np.zeros_like(calibration_stem))
    old.fusion = "max"
    old.set_fusion_references(calibration_patch, np.zeros_like(calibration_stem))  # max fusion needs no spread
    assert old.fusion_references["stem_sd"] == 0.0
    with pytest.raises(ValueError, match="map fusion must be one of"):
        nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "stem": {**settings["stem"], "fusion": "mean"}}, DENSITY)
    with pytest.raises(ValueError, match="localization.stem.reference: the fusion reference must be one of pixel, image_max, got 'mean'"):
        nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "stem": {**settings["stem"], "reference": "mean"}}, DENSITY)
    with pytest.raises(ValueError, match="localization.stem.reference: .*'zsum' fusion reads the calibration pixels"):
        nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "stem": {**settings["stem"], "reference": "image_max"}}, DENSITY)
    # a fixed map component returns that term of the fusion alone (same split, same seeds: the same references); a bad one is refused before the fit, naming the key
    stem_only = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "stem": {**settings["stem"], "component": "stem"}}, DENSITY)
    assert stem_only.component == "stem"
    references = localizer.fusion_references  # zsum fusion here: the stem term is its z-score
    np.testing.assert_allclose(nodes.score_maps(stem_only, dataset, settings)[0], (stem - references["stem_mean"]) / references["stem_sd"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="localization.stem.component: the map component must be one of fused, patch, stem, got 'both' or 'synthetic'"):
        nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "stem": {**settings["stem"], "component": "both"}}, DENSITY)



def test_map_center_through_fit_localizer_centres_the_maps_on_each_image_and_names_a_bad_setting():
    """The localizer's maps minus each image's median (same split, same seeds: the same localizer otherwise);
    a bad setting is refused before the fit, naming the key."""
    import pytest

    state_dict, dataset, split, settings, localizer = _fused_localizer()
    centred = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "map_center": "image_median"}, DENSITY)
    assert centred.map_center == "image_median" and localizer.map_center == "none"
    plain_maps = nodes.score_maps(localizer, dataset, settings)[0]
    np.testing.assert_allclose(nodes.score_maps(centred, dataset, settings)[0], plain_maps - np.median(plain_maps.reshape(len(plain_maps), -1), 1)[:, None, None],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="localization.map_center: the map centre must be one of none, image_median, image_median_capped, got 'mean' or 'synthetic'"):
        nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "map_center": "mean"}, DENSITY)


def test_map_center_synthetic_through_fit_localizer_chooses_on_the_calibration_images_and_says_so():
    """localization.map_center: synthetic: the centre chosen on synthetic defects in the calibration images (the same
    choice as the core method's on them); score_maps' settings and the metrics' "maps" name it."""
    import json

    import matplotlib.pyplot as plt
    import pandas as pd

    state_dict, dataset, split, settings, localizer = _fused_localizer()
    stem = {**settings["stem"], "synthetic": {"copies": 1, "seed": 0}}
    chosen = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "map_center": "synthetic", "stem": stem}, DENSITY)
    scores = localizer.choose_map_center(dataset["train_images"][split["calibration"]], copies=1, seed=0)
    assert chosen.map_center == scores["chosen"] == localizer.map_center and chosen.center_scores == scores
    assert chosen.component == "fused" and chosen.component_scores is None  # the component stays as set
    maps, raw, patch, map_settings = nodes.score_maps(chosen, dataset, settings)
    assert map_settings["map_center"] == chosen.map_center and map_settings["center_scores"] == scores and map_settings["fused"]
    json.dumps(map_settings)  # stored as JSON
    labels = (dataset["test_masks"].reshape(len(maps), -1).max(1) > 0).astype(int)
    index = pd.DataFrame({"split": ["test"] * len(maps), "label": labels, "path": [f"x/test/kind/{number:03d}.png" for number in range(len(maps))]})
    metrics, figure = nodes.evaluate_localization(maps, raw, patch, maps, dataset, index, {**settings, "figure_images": 1}, settings=map_settings)
    plt.close(figure)
    assert metrics["maps"].endswith(", centred on each image's median") == (chosen.map_center == "image_median")

def test_a_capped_centre_through_fit_localizer_takes_its_cap_from_the_calibration_split_and_says_so():
    """localization.map_center: image_median_capped: calibrate keeps the held-out calibration maps' medians, the
    test maps are centred on the lower of their median and the highest of those; map_settings carry the cap, and
    the metrics' "maps" and the figure name the centre."""
    import json

    import matplotlib.pyplot as plt
    import pandas as pd

    from cutpaste.core.localize import center_on_image
    from cutpaste.tracking import MlflowTrackingHook

    state_dict, dataset, split, settings, localizer = _fused_localizer()
    capped = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "map_center": "image_median_capped"}, DENSITY)
    assert capped.map_center == "image_median_capped" and len(capped.calibration_medians["fused"]) == len(split["calibration"])
    expected = localizer.read_calibration_medians(dataset["train_images"][split["calibration"]])  # the same levels, read again
    np.testing.assert_allclose(capped.calibration_medians["fused"], expected["fused"], rtol=1e-5, atol=1e-6)
    maps, raw, patch, map_settings = nodes.score_maps(capped, dataset, settings)
    plain = nodes.score_maps(localizer, dataset, settings)[0]
    assert map_settings["map_center"] == "image_median_capped" and map_settings["center_cap"] == max(expected["fused"])
    np.testing.assert_allclose(maps, center_on_image(plain, cap=map_settings["center_cap"]), rtol=1e-4, atol=1e-4)
    json.dumps(map_settings)
    labels = (dataset["test_masks"].reshape(len(maps), -1).max(1) > 0).astype(int)
    index = pd.DataFrame({"split": ["test"] * len(maps), "label": labels, "path": [f"x/test/kind/{number:03d}.png" for number in range(len(maps))]})
    metrics, figure = nodes.evaluate_localization(maps, raw, patch, maps, dataset, index, {**settings, "figure_images": 1}, settings=map_settings)
    assert metrics["maps"].endswith(", centred on each image's median (at most the calibration images' highest)")
    assert any("minus min(median, normal max)" in (axis.get_ylabel() or "") for axis in figure.axes)
    plt.close(figure)
    calls = []

    class Client:  # what the tracking hook sends MLflow for this localizer
        def set_tag(self, *args):
            calls.append(("tag", *args))

        def log_metric(self, *args):
            calls.append(("metric", *args))

    hook = MlflowTrackingHook()
    hook.client = Client()
    hook._log_localizer("run", capped)
    assert ("tag", "run", "map_center", "image_median_capped") in calls and ("metric", "run", "map_center_cap", map_settings["center_cap"]) in calls


def _write_category(root, name: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, number in [("train/good", 0), ("train/good", 1), ("test/good", 0), ("test/crack", 0)]:
        path = root / name / split / f"{number:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:15, 5:15] = 255
    (root / name / "ground_truth/crack").mkdir(parents=True)
    Image.fromarray(mask).save(root / name / "ground_truth/crack/000_mask.png")


def test_a_category_listed_in_image_size_by_category_is_localized_at_its_own_size(tmp_path):
    import pytest

    ingest = {"image_size": 32, "image_size_by_category": {"fine": 48}, "progress": False}
    assert nodes.localization_image_size("fine", ingest) == 48
    assert nodes.localization_image_size("other", ingest) == 32
    assert nodes.localization_image_size("other", {"image_size": 32}) == 32   # older configs: no key
    for name in ("fine", "other"):
        _write_category(tmp_path, name)
    fine, _ = nodes.ingest_localization("fine", str(tmp_path), ingest)
    other, _ = nodes.ingest_localization("other", str(tmp_path), ingest)
    assert fine["image_size"] == 48 and fine["train_images"].shape[1:3] == (48, 48) and fine["test_masks"].shape[1:] == (48, 48)
    assert other["image_size"] == 32 and other["train_images"].shape[1:3] == (32, 32)

    with pytest.raises(ValueError, match="'fine'.*at least 16 px"):
        nodes.localization_image_size("fine", {"image_size": 32, "image_size_by_category": {"fine": "big"}})
    with pytest.raises(ValueError, match="must map category names"):
        nodes.localization_image_size("fine", {"image_size": 32, "image_size_by_category": [48]})



def _augment():
    with open(Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_detection.yml") as handle:
        return yaml.safe_load(handle)["augment"]  # the base augmentations


def _patch_training(init, steps=0):
    return {**LOCALIZATION, "train_patch_size": 16, "extract_patch_size": 16, "stride": 8,
            "training": {**LOCALIZATION["training"], "init": init, "steps": steps, "batch_size": 6, "seed": 0, "checkpoint_dir": None}}


def _encoder(state):
    return {key: value for key, value in state.items() if key.startswith("encoder.")}


def test_patch_model_warm_starts_from_the_image_model_encoder():
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    torch.manual_seed(1)
    image_model = CutPasteNet(num_classes=3, head_dims=(8,))
    image_model.encoder.bn1.running_mean.add_(0.5)  # BatchNorm statistics travel with the weights
    warm, history = nodes.train_patch_model(dataset, split, MODEL, _patch_training("image_model"), _augment(), image_model.state_dict())
    assert history.empty
    for key, value in _encoder(image_model.state_dict()).items():
        assert torch.equal(warm.state_dict()[key], value), key
    assert not torch.equal(warm.state_dict()["head.0.weight"], image_model.state_dict()["head.0.weight"])  # head and classifier start afresh

    cold, _ = nodes.train_patch_model(dataset, split, MODEL, _patch_training("random"), _augment(), image_model.state_dict())
    assert not torch.equal(cold.state_dict()["encoder.conv1.weight"], image_model.state_dict()["encoder.conv1.weight"])

    trained, history = nodes.train_patch_model(dataset, split, MODEL, _patch_training("image_model", steps=2), _augment(), image_model)
    assert len(history) == 2 and not torch.equal(trained.state_dict()["encoder.conv1.weight"], image_model.state_dict()["encoder.conv1.weight"])


def test_patch_model_warm_start_errors_name_the_problem():
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    with pytest.raises(ValueError, match="init must be one of random, image_model, got 'imagenet'"):
        nodes.train_patch_model(dataset, split, MODEL, _patch_training("imagenet"), _augment(), None)
    with pytest.raises(ValueError, match="aligned: localization.training.init is image_model but no image model"):
        nodes.train_patch_model(dataset, split, MODEL, _patch_training("image_model"), _augment(), None)
    other = {key: value for key, value in CutPasteNet(num_classes=3, head_dims=(8,)).state_dict().items() if key != "encoder.conv1.weight"}
    with pytest.raises(ValueError, match=r"aligned: the image model's encoder does not fit.*data/06_models/aligned/model.pt"):
        nodes.train_patch_model(dataset, split, MODEL, _patch_training("image_model"), _augment(), other)


def test_image_and_patch_models_share_the_calibration_split():
    """The warm start keeps the calibration images unseen: both splits depend on the image count alone."""
    data = aligned_object_dataset(size=64, n_train=14, n_test_good=2, n_test_defect=3)
    small, large = _dataset(), {"category": "aligned", "image_size": 64, "train_images": data["train_images"]}
    threshold = {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0}
    assert detection_split(small, threshold) == nodes.split_training_images(large, threshold)


def test_aligned_categories_train_their_patch_model_for_aligned_steps():
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    settings = _patch_training("random", steps=1)
    settings["training"]["aligned_steps"] = 2
    _, history = nodes.train_patch_model(dataset, split, MODEL, settings, _augment())
    assert len(history) == 2  # "aligned" is a per-location category
    _, history = nodes.train_patch_model({**dataset, "category": "texture"}, split, MODEL, settings, _augment())
    assert len(history) == 1
    settings["training"]["aligned_steps"] = None
    assert nodes._patch_training("aligned", settings)["steps"] == 1
    settings["training"]["aligned_steps"] = "many"
    with pytest.raises(ValueError, match="aligned_steps must be a whole number"):
        nodes.train_patch_model(dataset, split, MODEL, settings, _augment())


def test_intensity_normalised_maps_hold_when_the_lighting_dims(tmp_path):
    """With localization.normalize_intensity every image is scaled to the fit images' median grey level
    before the localizer sees it: a good image under a 20 % dimmer lamp gives about its own map, where
    without it the map moves; the reference is a fit-split figure and survives a round trip."""
    from cutpaste.core.localize import Localizer, intensity_levels, normalize_intensity

    torch.manual_seed(0)
    state_dict = CutPasteNet(num_classes=3, head_dims=(8,)).state_dict()
    dataset = _dataset()
    split = nodes.split_training_images(dataset, {"holdout_fraction": 0.2, "min_holdout": 5, "seed": 0})
    settings = {**LOCALIZATION, "stem": {"fuse": True, "max_vectors": 10**6, "seed": 0, "per_location": True}}
    plain = nodes.fit_localizer(state_dict, dataset, split, MODEL, settings, DENSITY)
    leveled = nodes.fit_localizer(state_dict, dataset, split, MODEL, {**settings, "normalize_intensity": True}, DENSITY)
    assert plain.intensity_reference is None
    assert leveled.intensity_reference == np.median(intensity_levels(dataset["train_images"][split["fit"]]))
    good = dataset["test_images"][:2]
    dim = np.rint(good * 0.8).astype(np.uint8)
    np.testing.assert_allclose(np.median(intensity_levels(normalize_intensity(dim, 100.0))), 100.0, atol=1.0)
    moved = {name: np.abs(localizer.score_maps(dim) - localizer.score_maps(good)).mean() for name, localizer in (("plain", plain), ("leveled", leveled))}
    assert moved["leveled"] < 0.25 * moved["plain"], moved
    leveled.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.intensity_reference == leveled.intensity_reference
    np.testing.assert_allclose(loaded.score_maps(dim), leveled.score_maps(dim), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positive grey level"):
        normalize_intensity(good, 0.0)
