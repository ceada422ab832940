"""Pretrained weights, feature taps, the fine-tuning schedule and Table 3 (tiny sizes, random-init weights)."""

import logging
import urllib.error

import numpy as np
import pandas as pd
import pytest
import torch

from cutpaste.core import report
from cutpaste.core.augment import Preprocess, build_task
from cutpaste.core.models import CutPasteNet, PretrainedWeightsError, build_encoder, torchvision_backbone
from cutpaste.core.train import state_fingerprint
from cutpaste.core.transfer import DivergedError, FineTuneConfig, batchnorm_layers, fine_tune


def _images(n=8, size=32):
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def resnet_weights(tmp_path):
    """A random-init torchvision ResNet-18 state_dict saved like torchvision's ImageNet file."""
    torch.manual_seed(123)
    state = torchvision_backbone("resnet18").state_dict()
    path = tmp_path / "resnet18-random.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download that fails like an offline machine."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def _fine_tune_config(head_epochs, full_epochs):
    return FineTuneConfig(head_epochs=head_epochs, full_epochs=full_epochs, steps_per_epoch=1, batch_size=6, head_lr=0.1, full_lr=0.1,
                          device="cpu", precision="fp32")


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def test_weights_path_round_trip_is_bit_exact(resnet_weights):
    path, state = resnet_weights
    encoder, width = build_encoder("resnet18", pretrained="imagenet", weights_path=path)
    loaded = encoder.state_dict()
    assert width == 512
    assert set(loaded) == {name for name in state if not name.startswith("fc.")}
    for name, value in loaded.items():
        assert torch.equal(value, state[name]), name
    network = CutPasteNet(num_classes=3, head_dims=(8,), pretrained="imagenet", weights_path=str(path))
    for name, value in network.encoder.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert not torch.equal(CutPasteNet(num_classes=3, head_dims=(8,)).encoder.conv1.weight, state["conv1.weight"])


def test_pretrained_without_weights_stops_with_the_file_to_supply(offline_empty_hub):
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-f37072fd\.pth.*weights_path") as error:
        build_encoder("resnet18", pretrained="imagenet")
    assert str(offline_empty_hub / "checkpoints" / "resnet18-f37072fd.pth") in str(error.value)
    assert build_encoder("resnet18", pretrained=False)[1] == 512  # random init needs no weights


def test_bad_weights_files_are_named(tmp_path, resnet_weights):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(PretrainedWeightsError, match=f"{missing}: weights file not found.*resnet18-f37072fd.pth"):
        build_encoder("resnet18", pretrained="imagenet", weights_path=missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsError, match=f"{garbage}: not a loadable torch state_dict"):
        build_encoder("resnet18", pretrained="imagenet", weights_path=garbage)
    partial = tmp_path / "partial.pth"
    torch.save({name: value for name, value in resnet_weights[1].items() if name != "conv1.weight"}, partial)
    with pytest.raises(PretrainedWeightsError, match=f"{partial}: not a torchvision resnet18 state_dict.*conv1.weight"):
        build_encoder("resnet18", pretrained="imagenet", weights_path=partial)
    with pytest.raises(ValueError, match="pretrained must be"):
        build_encoder("resnet18", pretrained="imagenet21k")


def test_head_only_phase_changes_only_head_and_classifier():
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(8,))
    encoder_before, head_before, classifier_before = _snapshot(network.encoder), _snapshot(network.head), _snapshot(network.classifier)
    history = fine_tune(network, _images(), build_task("3way"), Preprocess(), _fine_tune_config(head_epochs=2, full_epochs=0), progress=False)
    assert history["phase"].tolist() == ["head", "head"]
    assert _changed(encoder_before, network.encoder) == set()  # weights, BatchNorm affine and running statistics
    assert {"0.weight", "1.weight", "1.running_mean"} <= _changed(head_before, network.head)
    assert _changed(classifier_before, network.classifier) == {"weight", "bias"}
    assert all(parameter.requires_grad for parameter in network.parameters())


def test_batchnorm_statistics_and_affine_frozen_while_all_layers_train():
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(8,))
    norms = batchnorm_layers(network.encoder)
    assert len(norms) == 20
    norms_before = [_snapshot(norm) for norm in norms]
    encoder_before = _snapshot(network.encoder)
    history = fine_tune(network, _images(), build_task("3way"), Preprocess(), _fine_tune_config(head_epochs=1, full_epochs=2), progress=False)
    assert history["phase"].tolist() == ["head", "full", "full"] and history["step"].tolist() == [1, 2, 3]
    for norm, before in zip(norms, norms_before):
        assert _changed(before, norm) == set()  # running_mean, running_var, num_batches_tracked, weight, bias
    changed = _changed(encoder_before, network.encoder)
    assert "conv1.weight" in changed and "layer4.1.conv2.weight" in changed
    assert not network.training


def test_batchnorm_moves_when_not_frozen():
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(8,))
    before = _snapshot(network.encoder.bn1)
    config = _fine_tune_config(head_epochs=0, full_epochs=1)
    config.freeze_batchnorm = False
    fine_tune(network, _images(), build_task("3way"), Preprocess(), config, progress=False)
    assert {"running_mean", "running_var", "weight"} <= _changed(before, network.encoder.bn1)


def test_fine_tuning_resumes_from_phase_checkpoints(tmp_path, caplog):
    config = _fine_tune_config(head_epochs=1, full_epochs=2)
    torch.manual_seed(0)
    first = CutPasteNet(num_classes=3, head_dims=(8,))
    fine_tune(first, _images(), build_task("3way"), Preprocess(), config, checkpoint_dir=tmp_path, progress=False)
    assert {path.name for path in tmp_path.iterdir()} == {"head.pt", "full.pt"}
    torch.manual_seed(0)  # a restart builds the same initial network; both phases then resume at their last step
    second = CutPasteNet(num_classes=3, head_dims=(8,))
    with caplog.at_level(logging.INFO, logger="cutpaste.core.train"):
        fine_tune(second, _images(), build_task("3way"), Preprocess(), config, checkpoint_dir=tmp_path, progress=False)
    resumed = [record.getMessage() for record in caplog.records if "resumed from" in record.getMessage()]
    assert [message.split(" at step ")[0] for message in resumed] == [f"resumed from {tmp_path / 'head.pt'}", f"resumed from {tmp_path / 'full.pt'}"]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name

    torch.manual_seed(1)  # another initial network (as another weights file): its checkpoints are not resumed
    caplog.clear()
    fine_tune(CutPasteNet(num_classes=3, head_dims=(8,)), _images(), build_task("3way"), Preprocess(), config, checkpoint_dir=tmp_path, progress=False)
    assert not any("resumed from" in record.getMessage() for record in caplog.records)


def test_divergence_stops_with_a_clear_error():
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(8,))
    config = _fine_tune_config(head_epochs=4, full_epochs=0)
    config.head_lr = 1e30
    with pytest.raises(DivergedError, match="phase 'head' diverged.*lower the phase's learning rate"):
        fine_tune(network, _images(), build_task("3way"), Preprocess(), config, progress=False)


def test_state_fingerprint_tells_weights_apart(resnet_weights):
    path, _ = resnet_weights
    from_file = build_encoder("resnet18", pretrained="imagenet", weights_path=path)[0]
    assert state_fingerprint(from_file) == state_fingerprint(build_encoder("resnet18", pretrained="imagenet", weights_path=path)[0])
    assert state_fingerprint(from_file) != state_fingerprint(build_encoder("resnet18")[0])


def test_paper_schedule_defaults():
    config = FineTuneConfig()
    head, full = config.phase_config("head"), config.phase_config("full")
    assert (head.steps, head.lr, full.steps, full.lr, head.batch_size) == (10 * 256, 0.03, 64 * 256, 1e-4, 24)


def test_efficientnet_b4_level7_is_features7_pooled():
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(8,), backbone="efficientnet_b4").eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        level7 = network.embed(images, "level7")
        reference = network.encoder.features[:8](network.normalize(images)).mean((2, 3))
        pooled = network.embed(images)
        logits, _ = network(images)
    assert level7.shape == (2, 448) and network.tap_width("level7") == 448
    assert torch.allclose(level7, reference)
    assert pooled.shape == (2, 1792) and logits.shape == (2, 3)
    encoder, width = build_encoder("efficientnet_b4", feature_tap="level7")
    assert width == 448 and encoder.eval()(images).shape == (2, 448)
    with pytest.raises(ValueError, match="level0'..'level8' for efficientnet_b4"):
        CutPasteNet(num_classes=3, head_dims=(8,), backbone="efficientnet_b4", feature_tap="level9")


def test_resnet_levels_and_default_tap_unchanged():
    network = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(network.embed(images), network.encoder(network.normalize(images)))
        assert network.embed(images, "level3").shape == (2, 256) and network.tap_width("level0") == 64
    with pytest.raises(ValueError, match="level0'..'level4' for resnet18"):
        network.embed(images, "level7")


def _transfer_metrics(backbone, value):
    keys = {report.transfer_metric_key(stage, tap): value for stage in report.TRANSFER_STAGES for tap in ("pool", "level7")}
    return {"backbone": backbone, "pretrained": "imagenet", "taps": ["pool", "level7"], "n_test": 10, **keys}


def test_transfer_table_paper_columns_only_for_a_complete_comparable_run():
    table = report.transfer_table({"brick": _transfer_metrics("efficientnet_b4", 0.9), "gravel": _transfer_metrics("efficientnet_b4", 0.7)})
    assert table["category"].tolist() == ["brick", "gravel", "mean"]
    assert table.loc[2, "level7_fine_tuned"] == pytest.approx(80.0) and table.loc[2, "n_test"] == 20
    assert table.filter(like="paper_").isna().all().all()
    full = report.transfer_table({category: _transfer_metrics("efficientnet_b4", 0.95) for category in report.PAPER_IMAGE_AUROC_3WAY})
    mean = full.iloc[-1]
    assert (mean["paper_pool_pretrained"], mean["paper_pool_fine_tuned"], mean["paper_level7_pretrained"], mean["paper_level7_fine_tuned"]) == (
        94.5, 96.6, 96.8, 97.1)
    other = report.transfer_table({category: _transfer_metrics("resnet18", 0.95) for category in report.PAPER_IMAGE_AUROC_3WAY})
    assert pd.isna(other.iloc[-1]["paper_pool_pretrained"])
    markdown = report.to_markdown(full, "Transfer", note=report.TRANSFER_NOTE)
    assert "| mean" in markdown and "features[7]" in markdown
