"""The image-classifier workload: convnets from SimpleNet to ResNet-18.

    params.py   its params.yaml section           staging.py  prepare / normalize / what workers read
    data.py     sources, splits, pixel statistics model.py    the architectures, their model file
    loop.py     the Ray Train worker loop         evaluate.py accuracy, confusion, CAMs
    pyfunc.py   the registered MLflow model
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.workloads.base import Registration, TrainingData, Workload
from components.workloads.image_classifier.params import ImageClassifierParams


class ImageClassifier(Workload):
    name = "image_classifier"
    params = ImageClassifierParams
    data_meta = "stats.json"
    live_metrics = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "images_per_s")
    headline = ("lr", "dropout", "weight_decay")
    stage_modules = {"prepare": ("staging",), "normalize": ("staging",), "tune": ("staging", "loop"),
                     "train": ("staging", "loop", "model"), "evaluate": ("evaluate", "baselines", "model"),
                     "register": ("pyfunc", "model", "evaluate", "data")}
    # by val loss, not accuracy: on a few hundred val images accuracy ties and spikes (a
    # high-lr epoch at 0.994 val published at 0.967 test), while the loss separates epochs
    select = ("val_loss", "min")
    baseline_metric = "val_accuracy"
    train_metrics = ("samples_padded",)  # a last batch filled up to split evenly over workers

    def prepare(self, p: ImageClassifierParams, out: str) -> str:
        from components.workloads.image_classifier.staging import prepare_images

        m = prepare_images(p.prepare, out)
        return f"{m['rows']} images {tuple(m['shape'])}, splits {m['splits']}, {m['skipped']} skipped -> {out}"

    def normalize(self, p: ImageClassifierParams, src: str, out: str) -> str:
        from components.workloads.image_classifier.staging import normalize_images

        m = normalize_images(src, out, p.normalize)
        rows = {k.split(".")[0]: v["rows"] for k, v in m["files"].items()}
        return (f"{rows}; train mean {[round(x, 4) for x in m['mean']]}, "
                f"std {[round(x, 4) for x in m['std']]} -> {out}")

    def training_data(self, folder: str, train: dict[str, Any], p: ImageClassifierParams) -> TrainingData:
        from components.workloads.image_classifier.staging import training_data

        data = training_data(folder, train["flip"], train["crop"], p.prepare.source) | {"tta": train["tta"]}
        return TrainingData(data, {k: data[k] for k in ("n_classes", "n_train", "flip", "crop", "tta")})

    def worker_loop(self) -> Callable[[dict[str, Any]], None]:
        from components.workloads.image_classifier.loop import train_loop_per_worker

        return train_loop_per_worker

    def publish(self, path: str | Path, state: dict[str, Any], folder: str, data: dict[str, Any],
                train: dict[str, Any]) -> None:
        from components.workloads.image_classifier.model import publish_model

        publish_model(path, state, data, train["arch"], train["dropout"], train["tta"])

    def evaluate(self, p: ImageClassifierParams, data: str, model: str,
                 reports: Path, state: Path) -> tuple[dict[str, Any], list[str]]:
        from components.data.parquet import load_manifest
        from components.evaluation import classification_metrics, plot_confusion
        from components.workloads.image_classifier.baselines import baselines
        from components.workloads.image_classifier.evaluate import plot_cams, predict, read_images
        from components.workloads.image_classifier.model import load_model

        net, blob = load_model(model)
        manifest, classes = load_manifest(data), blob["classes"]
        metrics: dict[str, Any] = {}
        for split in ("val", "test"):
            x, y = read_images(data, split, manifest)
            probs = predict(net, blob, x)
            m, conf = classification_metrics(split, probs, y, classes)
            metrics |= m
            acc = m["accuracy" if split == "val" else "test_accuracy"]
            plot_confusion(reports / f"confusion_{split}.png", conf, classes, f"{split}: accuracy {acc:.4f}")
            if split == "val":
                pred = probs.argmax(1)
                (reports / "confusion.csv").write_text("actual,predicted\n" + "".join(
                    f"{classes[a]},{classes[b]}\n" for a, b in zip(y.tolist(), pred.tolist(), strict=True)))
                if hasattr(net, "features"):
                    plot_cams(reports / "cam.png", net, blob, x[:p.evaluate.n_cam], y[:p.evaluate.n_cam])
        # the floor a model must beat, from the same splits (register will not crown one that does not)
        x_train, y_train = read_images(data, "train", manifest)
        metrics |= baselines(x_train.numpy(), y_train.numpy(),
                             {s: tuple(t.numpy() for t in read_images(data, s, manifest)) for s in ("val", "test")})
        return metrics, [f"accuracy {metrics['accuracy']:.4f} (val), {metrics['test_accuracy']:.4f} (test)",
                         f"baselines on val: linear {metrics['baseline_linear_val_accuracy']:.4f}, majority "
                         f"{metrics['baseline_majority_val_accuracy']:.4f}"]

    def registration(self, data: str, model: str) -> Registration:
        from components.data.parquet import check_table, load_manifest
        from components.model_file import read_metadata
        from components.workloads.image_classifier.data import IMAGES_SCHEMA, decode
        from components.workloads.image_classifier.pyfunc import log_model

        manifest = load_manifest(data)
        # the serving example without torch: register imports it only to re-score a champion
        first = check_table(Path(data) / "val.parquet", IMAGES_SCHEMA, manifest["files"]["val.parquet"])
        example = decode(first.read_row_group(0).to_batches(max_chunksize=1)[0])[0]

        def rescore(model_file: str) -> float:
            from components.workloads.image_classifier.evaluate import predict, read_images
            from components.workloads.image_classifier.model import load_model

            x, y = read_images(data, "val", manifest)
            net, own = load_model(model_file)
            return float((predict(net, own, x).argmax(1) == y).float().mean())

        return Registration(read_metadata(model), rescore, lambda: log_model(model, example).model_uri)


WORKLOAD = ImageClassifier()
