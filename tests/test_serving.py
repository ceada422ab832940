"""The served detector: thread-safe preparation, request limits, per-row errors, and a cold-started
``mlflow models serve`` under concurrent clients."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import servers
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from cutpaste.core.density import GaussianDensity
from cutpaste.core.detector import Detector
from cutpaste.core.image_score import fit_image_score
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import embed_images, extract_features, prepare_for_inference
from cutpaste.serving import ENV_MAX_IMAGES, ENV_MAX_PIXELS, ServingLimits, decode_image, save_pyfunc

SIZE = 32
MAX_PIXELS = 1_000_000
MAX_IMAGES = 16


def _detector() -> tuple[Detector, np.ndarray]:
    """A detector with the default zsum image score (pooled GDE + the stem's local density)."""
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(16,)).eval()
    images = np.random.default_rng(0).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    features = extract_features(network, images[:8], 8, "cpu", "fp32")
    gde = GaussianDensity(shrinkage="ledoit_wolf", l2_normalize=False).fit(features)
    image_score = fit_image_score("zsum", network, prepare_for_inference(network, "cpu", "fp32"), images[:8], images[8:], gde, 8, quantile=0.9)
    detector = Detector(
        category="widget", image_size=SIZE, model_config={"backbone": "resnet18", "head_dims": [16]},
        state_dict={k: v.clone() for k, v in network.state_dict().items()}, density=gde,
        threshold=image_score.threshold(), feature_batch_size=8, precision="auto", device="cpu", image_score=image_score,
    )
    return detector, images


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(pyfunc folder, detector folder, test images (N, S, S, 3)) with small limits."""
    root = tmp_path_factory.mktemp("serving")
    detector, images = _detector()
    detector.save(root / "detector")
    save_pyfunc(root / "detector", root / "pyfunc", max_pixels=MAX_PIXELS, max_images=MAX_IMAGES)
    return root / "pyfunc", root / "detector", images


@pytest.fixture(scope="module")
def model(served):
    return mlflow.pyfunc.load_model(str(served[0]))


def _encode(image: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def _png_header_only(width: int, height: int) -> str:
    """A PNG that states ``width`` x ``height`` in its header and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk + end).decode()


def _bad_rows(images: np.ndarray) -> dict[str, tuple[object, str]]:
    """name -> (image field, text the row's error must contain)."""
    good_png = base64.b64decode(_encode(Image.fromarray(images[0])))
    return {
        "not-base64": ("this is not base64!", "not valid base64"),
        "empty": ("", "'image' is empty"),
        "missing": (None, "'image' is empty or not a string"),
        "truncated.png": (base64.b64encode(good_png[: len(good_png) // 2]).decode(), "not a readable image"),
        "notes.txt": (base64.b64encode(b"just some text\n").decode(), "not a readable image"),
        "over-limit.png": (_png_header_only(2000, 1000), f"2000 x 1000 = 2,000,000 pixels, over this server's limit of {MAX_PIXELS:,}"),
        "bomb.png": (_png_header_only(20000, 20000), f"over this server's limit of {MAX_PIXELS:,} pixels per image"),
    }


def _odd_but_valid_rows(images: np.ndarray) -> dict[str, str]:
    rgba = Image.fromarray(np.dstack([images[1], np.full((SIZE, SIZE), 128, np.uint8)]), "RGBA")
    deep = Image.fromarray(images[2][..., 0].astype(np.uint16) * 257)  # mode I;16
    return {
        "tiny-1x1.png": _encode(Image.fromarray(images[3][:1, :1])),
        "alpha.png": _encode(rgba),
        "16bit.png": _encode(deep),
        "big.jpg": _encode(Image.fromarray(images[4]).resize((900, 900)), "JPEG", quality=90),
    }


def test_prepare_builds_the_network_once_across_threads():
    detector, images = _detector()
    barrier = threading.Barrier(8)

    def first_use(_):
        barrier.wait()
        return detector.prepare()[0], detector.score_arrays(images[:2])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(first_use, range(8)))
    assert len({id(network) for network, _ in results}) == 1
    for _, scores in results[1:]:
        np.testing.assert_array_equal(scores, results[0][1])


def test_embed_images_never_moves_or_converts_the_model():
    network = CutPasteNet(num_classes=3, head_dims=(16,))
    setup = prepare_for_inference(network, "cpu", "auto")
    before = [(p.data_ptr(), p.stride()) for p in network.parameters()]
    embed_images(network, np.zeros((2, SIZE, SIZE, 3), np.uint8), setup)
    assert [(p.data_ptr(), p.stride()) for p in network.parameters()] == before


def test_limits_come_from_defaults_config_and_environment():
    assert ServingLimits.resolve({}, {}) == ServingLimits()
    assert ServingLimits.resolve({"max_pixels": 10, "max_images": 3}, {}) == ServingLimits(10, 3)
    assert ServingLimits.resolve({"max_pixels": 10}, {ENV_MAX_PIXELS: "20", ENV_MAX_IMAGES: "5"}) == ServingLimits(20, 5)
    with pytest.raises(ValueError, match=f"{ENV_MAX_IMAGES} must be a positive integer, got 'many'"):
        ServingLimits.resolve({}, {ENV_MAX_IMAGES: "many"})
    with pytest.raises(ValueError, match="max_pixels must be a positive integer, got 0"):
        ServingLimits(max_pixels=0)


def test_a_big_jpeg_is_decoded_at_reduced_scale(monkeypatch):
    import cutpaste.serving

    seen = []
    real = cutpaste.serving.to_rgb_array
    monkeypatch.setattr(cutpaste.serving, "to_rgb_array", lambda image, size: seen.append(image.size) or real(image, size))
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((4000, 3000))
    array = decode_image(_encode(photo, "JPEG"), "row 0", SIZE, max_pixels=20_000_000)
    assert seen == [(500, 375)]  # 1/8 DCT scale: still >= 32 px on each side, never 12 Mpx in memory
    assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8


def test_bad_rows_get_their_error_and_the_rest_are_scored_like_batch_inference(model, served, tmp_path):
    _, detector_dir, images = served
    bad = _bad_rows(images)
    odd = _odd_but_valid_rows(images)
    good = {f"good-{i}.png": _encode(Image.fromarray(images[i])) for i in range(2)}
    rows = {**good, **{name: text for name, (text, _) in bad.items()}, **odd}
    answer = model.predict(pd.DataFrame({"name": list(rows), "image": list(rows.values())}))
    assert answer.columns.tolist() == ["name", "score", "normalized_score", "decision", "error"]
    assert answer["name"].tolist() == list(rows)
    for position, (name, (_, message)) in enumerate(bad.items(), start=len(good)):
        row = answer.iloc[position]
        assert row["error"].startswith(f"row {position} ({name}): ") and message in row["error"], row["error"]
        assert row["score"] is None and row["decision"] is None
    scored = answer[answer["error"] == ""]
    assert scored["name"].tolist() == list(good) + list(odd)
    assert set(scored["decision"]) <= {"normal", "anomalous"}
    for name, text in good.items():
        (tmp_path / name).write_bytes(base64.b64decode(text))
    expected = Detector.load(detector_dir).score_files([tmp_path / name for name in good], progress=False)
    np.testing.assert_allclose(scored["score"].iloc[: len(good)].astype(float), expected["score"], rtol=1e-6)


def test_whole_request_errors_are_clear(model, served):
    images = served[2]
    one = _encode(Image.fromarray(images[0]))
    with pytest.raises(MlflowException, match="request needs a column 'image'"):
        model.predict(pd.DataFrame({"picture": [one]}))
    with pytest.raises(MlflowException, match="request holds no row"):
        model.predict(pd.DataFrame({"image": []}))
    with pytest.raises(MlflowException, match=f"request holds {MAX_IMAGES + 1} images, over this server's limit of {MAX_IMAGES} images per request"):
        model.predict(pd.DataFrame({"image": [one] * (MAX_IMAGES + 1)}))


def test_a_failure_inside_the_model_is_an_error_not_a_dead_model(model, served, monkeypatch):
    one = pd.DataFrame({"image": [_encode(Image.fromarray(served[2][0]))]})
    python_model = model.unwrap_python_model()
    monkeypatch.setattr(python_model.detector, "score_arrays", lambda images: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(MlflowException, match=r"scoring failed inside the model \(RuntimeError: out of memory\)"):
        model.predict(one)
    monkeypatch.undo()
    assert model.predict(one)["error"].tolist() == [""]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text) if text.startswith("{") else {"message": text}


@pytest.mark.slow
def test_cold_server_answers_concurrent_clients_and_bad_requests(served):
    pyfunc_dir, _, images = served
    port = servers.free_port()
    process = servers.start([str(servers.BIN_DIR / "mlflow"), "models", "serve", "-m", str(pyfunc_dir), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        servers.wait_for(process, f"{url}/ping")
        payloads = [json.dumps({"dataframe_records": [{"name": f"c{c}-{i}.png", "image": _encode(Image.fromarray(images[(c + i) % len(images)]))}
                                                      for i in range(4)]}).encode() for c in range(8)]
        barrier = threading.Barrier(8)

        def client(index: int) -> list[int]:  # 8 clients x 3 requests x 4 images, all released at once
            barrier.wait()
            statuses = []
            for _ in range(3):
                status, answer = _post(f"{url}/invocations", payloads[index])
                statuses.append(status if status != 200 or all(row["error"] == "" for row in answer["predictions"]) else -1)
            return statuses

        with ThreadPoolExecutor(8) as pool:
            statuses = [s for batch in pool.map(client, range(8)) for s in batch]
        assert statuses == [200] * 24
        assert process.poll() is None

        rows = {**{name: text for name, (text, _) in _bad_rows(images).items()}, "good.png": _encode(Image.fromarray(images[0]))}
        status, answer = _post(f"{url}/invocations", json.dumps({"dataframe_records": [{"name": n, "image": t} for n, t in rows.items()]}).encode())
        assert status == 200, answer
        errors = [row["error"] for row in answer["predictions"]]
        assert all(error.startswith(f"row {i} ({name}): ") for i, (name, error) in enumerate(zip(rows, errors[:-1])))
        assert errors[-1] == "" and answer["predictions"][-1]["score"] is not None and answer["predictions"][0]["score"] is None

        one = {"image": rows["good.png"]}
        for body, message in [
            (b"{not json", ""),
            (json.dumps({"dataframe_records": []}).encode(), "request holds no row"),
            (json.dumps({"dataframe_records": [{"picture": "x"}]}).encode(), "request needs a column 'image'"),
            (b"42", ""),
            (json.dumps({"dataframe_records": [one] * (MAX_IMAGES + 1)}).encode(), f"limit of {MAX_IMAGES} images per request"),
        ]:
            status, answer = _post(f"{url}/invocations", body)
            assert status == 400 and message in answer.get("message", ""), (body[:40], status, answer)
        assert _post(f"{url}/invocations", json.dumps({"dataframe_records": [one]}).encode())[0] == 200  # still serving
    finally:
        servers.stop(process)
