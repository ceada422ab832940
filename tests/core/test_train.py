import numpy as np
import pytest
import torch

from cutpaste.core.augment import Preprocess, build_task
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import (
    TrainConfig,
    Trainer,
    extract_features,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)


def _images(n=8, size=32):
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _trainer(steps=4, checkpoint=None, seed=0, precision="fp32"):
    torch.manual_seed(seed)
    model = CutPasteNet(num_classes=3, head_dims=(32,))
    config = TrainConfig(steps=steps, batch_size=6, seed=seed, device="cpu", precision=precision, checkpoint_every=2)
    return Trainer(model, build_task("3way"), Preprocess(), config, checkpoint)


def test_model_shapes():
    model = CutPasteNet(num_classes=3, head_dims=(64, 16)).eval()
    logits, features = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 3) and features.shape == (2, 512)
    assert model.embed(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_same_seed_same_weights():
    first, second = _trainer(), _trainer()
    first.fit(_images(), progress=False)
    second.fit(_images(), progress=False)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_history_records_every_step():
    trainer = _trainer(steps=3)
    history = trainer.fit(_images(), progress=False)
    assert history["step"].tolist() == [1, 2, 3]
    assert history["loss"].notna().all() and history["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-9)


def test_killed_run_resumes_from_checkpoint_to_the_same_weights(tmp_path):
    checkpoint = tmp_path / "ckpt" / "model.pt"
    uninterrupted = _trainer(steps=4)
    uninterrupted.fit(_images(), progress=False)

    class Killed(Exception):
        pass

    def kill_after_step_3(record):
        if record["step"] == 3:
            raise Killed

    interrupted = _trainer(steps=4, checkpoint=checkpoint)
    with pytest.raises(Killed):
        interrupted.fit(_images(), progress=False, callback=kill_after_step_3)
    assert torch.load(checkpoint, weights_only=True)["step"] == 2  # at most checkpoint_every steps lost

    resumed = _trainer(steps=4, checkpoint=checkpoint, seed=0)
    history = resumed.fit(_images(), progress=False)
    assert history["step"].tolist() == [1, 2, 3, 4]
    for a, b in zip(uninterrupted.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_with_other_settings_is_not_resumed(tmp_path):
    checkpoint = tmp_path / "model.pt"
    _trainer(steps=2, checkpoint=checkpoint).fit(_images(), progress=False)
    history = _trainer(steps=4, checkpoint=checkpoint).fit(_images(), progress=False)
    assert history["step"].tolist() == [1, 2, 3, 4]


def test_checkpoint_from_other_initial_weights_is_not_resumed(tmp_path):
    checkpoint = tmp_path / "model.pt"
    first = _trainer(steps=4, checkpoint=checkpoint)
    first.fit(_images(), progress=False)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(32,))
    with torch.no_grad():  # same seed, config and images, another start (as a warm start from other weights)
        next(model.parameters()).add_(1.0)
    config = TrainConfig(steps=4, batch_size=6, seed=0, device="cpu", precision="fp32", checkpoint_every=2)
    history = Trainer(model, build_task("3way"), Preprocess(), config, checkpoint).fit(_images(), progress=False)
    assert history["step"].tolist() == [1, 2, 3, 4]
    assert not torch.equal(next(model.parameters()), next(first.model.parameters()))  # trained anew, not the checkpoint's weights


def test_bf16_autocast_step_runs_on_cpu():
    trainer = _trainer(steps=2, precision="bf16")
    assert trainer.dtype == torch.bfloat16 and trainer.memory_format == torch.channels_last
    history = trainer.fit(_images(), progress=False)
    assert np.isfinite(history["loss"]).all()


def test_features_eval_mode_and_batch_independent():
    model = CutPasteNet(num_classes=3, head_dims=(32,))
    images = _images(n=10)
    whole = extract_features(model, images, batch_size=10, device="cpu", precision="fp32")
    chunked = extract_features(model, images, batch_size=3, device="cpu", precision="fp32")
    assert whole.shape == (10, 512) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, chunked, rtol=1e-4, atol=1e-5)  # eval-mode BatchNorm: no batch statistics


def test_device_and_precision_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_memory_format("auto", torch.device("cpu"), None) == torch.contiguous_format
    assert resolve_memory_format("auto", torch.device("cpu"), torch.bfloat16) == torch.channels_last
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_rejects_non_uint8_images():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        _trainer().fit(np.zeros((4, 32, 32, 3), dtype=np.float32), progress=False)


def test_a_model_can_still_be_trained_after_feature_extraction():
    model = CutPasteNet(num_classes=2, head_dims=(8,))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    extract_features(model, images, batch_size=4, device="cpu", precision="auto", memory_format="channels_last")
    assert not any(parameter.is_inference() for parameter in model.parameters())
    logits, _ = model.train()(torch.rand(4, 3, 32, 32))
    logits.sum().backward()  # raises on inference tensors
    assert model.classifier.weight.grad is not None


def test_a_proxy_task_that_ends_near_chance_is_reported(caplog):
    import logging

    import pandas as pd

    from cutpaste.core.train import final_accuracy, warn_if_unlearned

    steps = np.arange(1, 501)
    # at chance for the whole run (3-way): the last tenth averages 0.35 -> warned
    stuck = pd.DataFrame({"step": steps, "loss": 1.1, "accuracy": np.where(steps % 2, 0.32, 0.38), "lr": 0.03})
    assert final_accuracy(stuck) == 0.35
    with caplog.at_level(logging.WARNING, logger="cutpaste.core.train"):
        assert warn_if_unlearned(stuck, 3, "kolektorsdd: patch model")
    assert "kolektorsdd: patch model: the proxy task ended near chance" in caplog.text and "0.35" in caplog.text
    # learned late: only the last tenth counts
    late = stuck.assign(accuracy=np.where(steps > 450, 0.9, 0.33))
    assert final_accuracy(late) == 0.9
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cutpaste.core.train"):
        assert not warn_if_unlearned(late, 3, "x")
    assert caplog.text == ""
    # chance depends on the number of classes: 0.52 is chance for a binary task, learned for 3-way
    flat = stuck.assign(accuracy=0.52)
    assert warn_if_unlearned(flat, 2, "binary") and not warn_if_unlearned(flat, 3, "3-way")
    assert np.isnan(final_accuracy(stuck.iloc[:0]))
