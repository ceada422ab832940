"""Accuracy against training budget: how good is the detector after 1, 2, 5, 10 minutes per category?

For each category of an MVTec-layout root and each wall-time budget, trains a fresh image-level
model (the project's settings from ``conf/<env>``, overridable with ``--set``) for as many steps as
the budget allows on this machine (the step time is measured first with a few warm-up steps), then
fits the GDE and the image score (``image_score.method``: the pooled GDE, or zsum / fused with the
stem's local density) on the fit split, calibrates the threshold on the held-out normal training images and
scores the test images. A budget gets its own run with its own cosine schedule, as a user who sets
``training.steps`` would get.

Writes ``<out>/budget.csv`` (one row per category and budget: steps, wall time, image AUROC (and, for a zsum or fused score, the
AUROC of each component: ``pooled_auroc``, ``stem_auroc``),
GradCAM pixel AUROC, held-out proxy-task accuracy, the threshold's false- and true-positive rates)
and ``<out>/budget.png`` (image AUROC against training wall time, one line per category).

    .venv/bin/python benchmarks/bench_budget.py --data-root data/01_raw/demo --categories brick grass gravel
    .venv/bin/python benchmarks/bench_budget.py --data-root ../shared/data/piped --categories PA_BDP01_TL \\
        --budgets 1 2 5 10 --set ingest.image_size=128

Only the held-out *normal* images (calibration split) feed the threshold and the proxy accuracy; the
test labels are used for the reported metrics alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cutpaste.core.augment import Preprocess, build_task  # noqa: E402
from cutpaste.core.data import load_category  # noqa: E402
from cutpaste.core.density import GaussianDensity  # noqa: E402
from cutpaste.core.detector import fit_threshold, holdout_split  # noqa: E402
from cutpaste.core.image_score import ImageScore, fit_image_score  # noqa: E402
from cutpaste.core.metrics import image_auroc, pixel_auroc  # noqa: E402
from cutpaste.core.models import CutPasteNet, encoder_stages  # noqa: E402
from cutpaste.core.train import TrainConfig, Trainer, embed_images, images_to_tensor, prepare_for_inference  # noqa: E402


def project_parameters(env: str, overrides: list[str]) -> dict:
    """The project's parameters for ``env`` (as ``kedro run --env`` reads them) with ``key.sub=value`` overrides."""
    from kedro.config import OmegaConfigLoader
    from omegaconf import OmegaConf

    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=env)
    parameters = OmegaConf.create(loader["parameters"])
    for item in overrides:
        key, _, value = item.partition("=")
        OmegaConf.update(parameters, key, _parse(value), force_add=True)
    return OmegaConf.to_container(parameters, resolve=True)


def _parse(value: str):
    import yaml

    return yaml.safe_load(value)


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), platform.processor())
    extras = [flag for flag in ("amx_bf16", "avx512_bf16") if f" {flag}" in flags]
    return f"{name} ({', '.join(extras) or 'no bf16 instructions'}), {torch.get_num_threads()} torch threads"


def make_trainer(parameters: dict, steps: int) -> Trainer:
    model_params, augment, training = parameters["model"], parameters["augment"], parameters["training"]
    task = build_task(augment["task"], augment.get("cutpaste"), augment.get("scar"), augment.get("confetti"))
    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{**{key: value for key, value in training.items() if key in fields}, "steps": max(1, steps)})
    torch.manual_seed(config.seed)
    network = CutPasteNet(task.num_classes, tuple(model_params["head_dims"]), model_params["backbone"])
    return Trainer(network, task, Preprocess(**augment.get("preprocess", {})), config)


def seconds_per_step(parameters: dict, images: np.ndarray, warmup: int = 3, timed: int = 8) -> float:
    trainer = make_trainer(parameters, warmup + timed)
    tensor = images_to_tensor(images, trainer.device)
    for _ in range(warmup):
        trainer.train_step(tensor)
    start = time.perf_counter()
    for _ in range(timed):
        trainer.train_step(tensor)
    return (time.perf_counter() - start) / timed


@torch.inference_mode()
def proxy_accuracy(trainer: Trainer, images: np.ndarray, repeats: int = 4) -> float:
    """Proxy-task accuracy of the trained network on held-out normal images, augmented by the task."""
    model = trainer.model.eval()
    generator = torch.Generator(device=trainer.device).manual_seed(12345)
    base = images_to_tensor(images, trainer.device).float().div_(255.0)
    correct = total = 0
    for _ in range(repeats):
        batch, labels = trainer.task(base, generator)
        with torch.autocast(device_type=trainer.device.type, dtype=trainer.dtype or torch.float32, enabled=trainer.dtype is not None):
            logits, _ = model(batch.contiguous(memory_format=trainer.memory_format))
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


@torch.inference_mode()
def feature_maps(model: CutPasteNet, images: np.ndarray, levels: tuple[int, ...], batch_size: int = 64) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, h, w, C) float32: the encoder's maps at ``levels`` (ResNet stage
    indices, 2 = layer2), each average-pooled 3x3 and resized to the first level's grid, concatenated."""
    stages = encoder_stages(model.encoder, model.backbone)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size], torch.device("cpu")).float().div_(255.0)
        features, taps = model.normalize(batch), []
        for index, stage in enumerate(stages[: max(levels) + 1]):
            features = stage(features)
            if index in levels:
                taps.append(torch.nn.functional.avg_pool2d(features, 3, 1, 1))
        size = taps[0].shape[-2:]
        taps = [tap if tap.shape[-2:] == size else torch.nn.functional.interpolate(tap, size=size, mode="bilinear") for tap in taps]
        outputs.append(torch.cat(taps, 1).permute(0, 2, 3, 1).float())
    return torch.cat(outputs).numpy()


def local_scores(network: CutPasteNet, data, split: dict, levels: tuple[int, ...], density_params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image score = max over the map of a GDE shared by all locations of the fit images' feature maps."""
    train_maps = feature_maps(network, data.train_images, levels)
    fit = train_maps[split["fit"]].reshape(-1, train_maps.shape[-1])
    density = GaussianDensity(density_params["shrinkage"], density_params["l2_normalize"]).fit(fit)
    test_maps = feature_maps(network, data.test_images, levels)
    score = lambda maps: density.score_samples(maps.reshape(-1, maps.shape[-1])).reshape(maps.shape[:3]).max((1, 2))  # noqa: E731
    return score(train_maps[split["calibration"]]), score(test_maps)


def threshold_rates(calibration_scores: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold_params: dict,
                    extra_quantiles: list[float] = ()) -> dict:
    """The threshold's false- and true-positive rates on the test images (and at ``extra_quantiles``),
    for scores whose threshold is fitted on their calibration scores (the pooled GDE, an ensemble)."""
    method = threshold_params.get("method", "lognormal")
    thresholds = {quantile: fit_threshold(calibration_scores, quantile, method).value
                  for quantile in [float(threshold_params["quantile"]), *extra_quantiles]}
    return rates_at(thresholds, scores, labels)


def image_score_rates(image_score: ImageScore, calibration_components: dict, test_components: dict, labels: np.ndarray,
                      extra_quantiles: list[float] = ()) -> dict:
    """The image score's threshold rates at its own quantile and at ``extra_quantiles`` (a combined
    score's calibration statistics are refitted from the same calibration images at each quantile)."""
    rows = {}
    for quantile in [image_score.quantile, *extra_quantiles]:
        at = dataclasses.replace(image_score, quantile=float(quantile)).calibrate(calibration_components)
        rows.update(rates_at({quantile: at.threshold().value}, at.combine(test_components), labels, first=not rows))
    return rows


def rates_at(thresholds: dict[float, float], scores: np.ndarray, labels: np.ndarray, first: bool = True) -> dict:
    """FPR/TPR of ``scores`` at each {quantile: threshold}; the first is named ``threshold_*``, the others ``*_q<percent>``."""
    row = {}
    for quantile, value in thresholds.items():
        flagged = scores > value
        tag = "threshold" if first and not row else f"q{round(100 * quantile)}"
        prefix = ("threshold_fpr", "threshold_tpr") if tag == "threshold" else (f"fpr_{tag}", f"tpr_{tag}")
        row[prefix[0]], row[prefix[1]] = float(flagged[labels == 0].mean()), float(flagged[labels == 1].mean())
    return row


def calibrated_ensemble(members: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Combine the models of a seed ensemble: each model's scores divided by the geometric mean of its
    calibration scores (normal images held out of training), then the geometric mean over models.
    Every member weighs the same whatever the scale of its Mahalanobis distances; the result stays
    positive, so the log-normal threshold applies to it unchanged.

    Args:
        members: per model, (calibration scores (n,), test scores (m,)).

    Returns:
        (combined calibration scores (n,), combined test scores (m,)).
    """
    calibration_logs, test_logs = [], []
    for calibration, test in members:
        reference = np.log(calibration).mean()
        calibration_logs.append(np.log(calibration) - reference)
        test_logs.append(np.log(test) - reference)
    return np.exp(np.mean(calibration_logs, 0)), np.exp(np.mean(test_logs, 0))


def run_one(parameters: dict, data, split: dict, steps: int, gradcam: bool, local: list[str] = (), extra_quantiles: list[float] = (),
            scores_out: list | None = None) -> dict:
    training = parameters["training"]
    trainer = make_trainer(parameters, steps)
    start = time.perf_counter()
    history = trainer.fit(data.train_images[split["fit"]], progress=False)
    train_s = time.perf_counter() - start
    network = trainer.model.eval()
    batch = int(parameters["features"]["batch_size"])
    setup = prepare_for_inference(network, training["device"], training["precision"], training["memory_format"])
    fit_images, calibration_images = data.train_images[split["fit"]], data.train_images[split["calibration"]]
    density = GaussianDensity(parameters["density"]["shrinkage"], parameters["density"]["l2_normalize"]).fit(embed_images(network, fit_images, setup, batch))
    image_score_params = parameters.get("image_score") or {"method": "pooled"}
    stem = image_score_params.get("stem") or {}
    threshold_params = parameters["threshold"]
    image_score = fit_image_score(image_score_params["method"], network, setup, fit_images, calibration_images, density, batch,
                                  int(stem.get("max_vectors", 100_000)), int(stem.get("seed", 0)), density.shrinkage,
                                  float(threshold_params["quantile"]), threshold_params.get("method", "lognormal"))
    calibration_scores = np.asarray(image_score.calibration_scores)
    calibration_components = image_score.components(network, setup, calibration_images, density, batch)
    components = image_score.components(network, setup, data.test_images, density, batch)
    scores = image_score.combine(components)
    labels = data.test_labels
    if scores_out is not None:
        scores_out.append((calibration_scores, scores))
    row = {
        "steps": steps, "n_calibration": len(split["calibration"]), "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - start, 1),
        "image_score": image_score.method, "image_auroc": image_auroc(labels, scores),
        **({f"{name}_auroc": image_auroc(labels, values) for name, values in components.items()} if len(components) > 1 else {}),
        "holdout_proxy_accuracy": proxy_accuracy(trainer, data.train_images[split["calibration"]]),
        "final_train_loss": float(history["loss"].tail(50).mean()),
        **image_score_rates(image_score, calibration_components, components, labels, extra_quantiles),
    }
    for name in local:
        levels = tuple(int(level) for level in name.removeprefix("layer"))
        calibration_local, test_local = local_scores(network, data, split, levels, parameters["density"])
        threshold_local = fit_threshold(calibration_local, float(threshold_params["quantile"]), threshold_params.get("method", "lognormal"))
        flagged_local = test_local > threshold_local.value
        row[f"{name}_max_auroc"] = image_auroc(labels, test_local)
        row[f"{name}_fpr"] = float(flagged_local[labels == 0].mean())
        row[f"{name}_tpr"] = float(flagged_local[labels == 1].mean())
    if gradcam:
        from cutpaste.core.localize import gradcam as gradcam_maps

        maps = gradcam_maps(network, density, data.test_images, device=training["device"])
        row["gradcam_pixel_auroc"] = pixel_auroc(data.test_masks[labels == 1], maps[labels == 1]) if labels.any() else float("nan")
    return row


def print_row(row: dict) -> None:
    print(", ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}" for key, value in row.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--budgets", nargs="+", type=float, default=[1, 2, 5, 10], help="training minutes per category")
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="fixed step counts instead of wall-time budgets")
    parser.add_argument("--env", default="base", help="conf/<env> to read the settings from")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter, e.g. training.lr=0.1")
    parser.add_argument("--label", default="", help="a name for this setting in the CSV")
    parser.add_argument("--gradcam", action="store_true", help="also GradCAM pixel AUROC")
    parser.add_argument("--local", nargs="*", default=[], help="also score by the max of a GDE on feature maps: layer2, layer3, layer23")
    parser.add_argument("--quantiles", nargs="*", type=float, default=[], help="also the threshold's FPR/TPR at these calibration quantiles, e.g. 0.9 0.95")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train this many models per budget (training.seed, +1, ...) and add a row for their calibrated ensemble")
    parser.add_argument("--out", default=str(ROOT / "data" / "08_reporting" / "budget"))
    args = parser.parse_args()

    parameters = project_parameters(args.env, args.set)
    image_size = int(parameters["ingest"]["image_size"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {cpu_kind()}; image size {image_size}; settings: {args.label or 'project defaults'} {' '.join(args.set)}")
    rows = []
    for category in args.categories:
        data = load_category(args.data_root, category, image_size)
        threshold_params = parameters["threshold"]
        split = holdout_split(len(data.train_images), float(threshold_params["holdout_fraction"]),
                              int(threshold_params.get("min_holdout", 10)), int(threshold_params.get("seed", 0)))
        step_s = seconds_per_step(parameters, data.train_images[split["fit"]])
        plan = [(None, steps) for steps in args.steps] if args.steps else [(minutes, int(minutes * 60 / step_s)) for minutes in args.budgets]
        for minutes, steps in plan:
            members = []
            for offset in range(args.seeds):
                seeded = {**parameters, "training": {**parameters["training"], "seed": int(parameters["training"]["seed"]) + offset}}
                row = {"category": category, "setting": args.label, "budget_min": minutes, "seconds_per_step": round(step_s, 3),
                       "seed": seeded["training"]["seed"], "models": 1,
                       **run_one(seeded, data, split, steps, args.gradcam, args.local, args.quantiles, members)}
                rows.append(row)
                print_row(row)
            if args.seeds > 1:
                calibration, combined = calibrated_ensemble(members)
                member_rows = rows[-args.seeds :]
                row = {"category": category, "setting": f"{args.label} ensemble".strip(), "budget_min": minutes,
                       "seconds_per_step": round(step_s, 3), "seed": "all", "models": args.seeds, "steps": steps,
                       "n_calibration": len(split["calibration"]),
                       "train_s": round(sum(member["train_s"] for member in member_rows), 1),
                       "total_s": round(sum(member["total_s"] for member in member_rows), 1),
                       "image_auroc": image_auroc(data.test_labels, combined),
                       **threshold_rates(calibration, combined, data.test_labels, parameters["threshold"], args.quantiles)}
                rows.append(row)
                print_row(row)
    table = pd.DataFrame(rows)
    csv = out / "budget.csv"
    if csv.is_file():  # earlier runs' rows stay: one table for every setting tried
        table = pd.concat([pd.read_csv(csv), table], ignore_index=True)
    table.to_csv(csv, index=False)
    plot(table, out / "budget.png")
    print(f"wrote {csv} and {out / 'budget.png'}")


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    seeds = table["seed"].astype(str).replace("nan", "") if "seed" in table else pd.Series("", index=table.index)
    several = seeds[seeds != "all"].nunique() > 1
    for (category, setting, seed), rows in table.groupby(["category", table["setting"].fillna(""), seeds], sort=False):
        curve = rows.sort_values("train_s")
        label = f"{category} {setting}{f' seed {seed}' if several and seed not in ('', 'all') else ''}".strip()
        axes[0].plot(curve["train_s"] / 60, 100 * curve["image_auroc"], marker="o", label=label)
        axes[1].plot(curve["steps"], 100 * curve["image_auroc"], marker="o", label=label)
    axes[0].set_xlabel("training wall time per category (min)")
    axes[1].set_xlabel("training steps")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[1].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlapped the major ones
    for axis in axes:
        axis.set_ylabel("image AUROC (%)")
        axis.grid(alpha=0.3)
        axis.axhline(50, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=7)
    figure.suptitle(cpu_kind(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
