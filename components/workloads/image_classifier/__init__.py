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
    model_key = "arch"
    train_metrics = ("samples_padded",)  # a last batch filled up to split evenly over workers

    def model_spec(self, blob: dict[str, Any]) -> str:
        return str(blob["config"]["arch"])  # what built the model, whatever the run's params said

    def prepare(self, p: ImageClassifierParams, out: str) -> str:
        from components.workloads.image_classifier.staging import prepare_images

        m = prepare_images(p.prepare, out)
        src = m["source_sizes"]
        sizes = "" if src["distinct_sizes"] == 1 else (
            f" from {src['distinct_sizes']} sizes (height {src['height']['min']}-{src['height']['max']}, width "
            f"{src['width']['min']}-{src['width']['max']}; {m['resize']})")
        return f"{m['rows']} images {tuple(m['shape'])}{sizes}, splits {m['splits']}, {m['skipped']} skipped -> {out}"

    def normalize(self, p: ImageClassifierParams, src: str, out: str) -> str:
        from components.workloads.image_classifier.staging import normalize_images

        m = normalize_images(src, out, p.normalize)
        rows = {k: v["rows"] for k, v in m["files"].items()}
        return (f"{rows}; train mean {[round(x, 4) for x in m['mean']]}, "
                f"std {[round(x, 4) for x in m['std']]} -> {out}")

    def training_data(self, folder: str, train: dict[str, Any], p: ImageClassifierParams) -> TrainingData:
        from components.workloads.image_classifier.staging import training_data

        data = training_data(folder, train["flip"], train["crop"], p.prepare.source) | {"tta": train["tta"]}
        from components.workloads.modules import check, is_import_path

        full = p.train.model_dump() | train  # a sweep's base lacks the searched keys: the section's stand in
        arch = str(full["arch"])
        if is_import_path(arch):  # the user's model: built and run once here, before any compute
            check(arch, f"{self.name}.train.arch", tuple(data["shape"]), data["n_classes"], full["dropout"])
        if full["weights"]:  # loaded once here too: a file that does not fit fails before any compute
            from components.workloads.image_classifier.model import build
            from components.workloads.modules import load_weights

            net = build(arch, tuple(data["shape"]), data["n_classes"], full["dropout"])
            loaded, left = load_weights(net, full["weights"], f"{self.name}.train.weights")
            data["weights_uri"] = str(Path(full["weights"]).resolve())  # workers run elsewhere
            print(f"[{self.name}] weights {full['weights']}: {len(loaded)} tensors load, {len(left)} stay as built"
                  + (f" ({', '.join(left[:4])}{', ...' if len(left) > 4 else ''})" if left else ""), flush=True)
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
        import numpy as np

        from components.data.dataset import in_sample, sample_rows
        from components.data.parquet import load_manifest
        from components.evaluation import classification_metrics, plot_confusion
        from components.workloads.image_classifier.baselines import baselines, features
        from components.workloads.image_classifier.evaluate import (
            plot_cams,
            predict_split,
            split_batches,
        )
        from components.workloads.image_classifier.model import load_model

        net, blob = load_model(model)
        manifest, classes = load_manifest(data), blob["classes"]
        metrics: dict[str, Any] = {}
        for split in ("val", "test"):  # streamed: a batch of pixels at a time
            probs, y = predict_split(net, blob, data, split, manifest, p.evaluate.bs)
            m, conf = classification_metrics(split, probs, y, classes)
            metrics |= m
            acc = m["accuracy" if split == "val" else "test_accuracy"]
            plot_confusion(reports / f"confusion_{split}.png", conf, classes, f"{split}: accuracy {acc:.4f}")
            if split == "val":
                pred = probs.argmax(1)
                (reports / "confusion.csv").write_text("actual,predicted\n" + "".join(
                    f"{classes[a]},{classes[b]}\n" for a, b in zip(y.tolist(), pred.tolist(), strict=True)))
                if hasattr(net, "features") and hasattr(net, "classifier"):  # what a CAM reads
                    x0, y0 = next(split_batches(data, "val", manifest, p.evaluate.n_cam))
                    plot_cams(reports / "cam.png", net, blob, x0, y0)
        # the floor a model must beat, from the same splits (register will not crown one that does not):
        # the linear model fits on a seeded sample of train, read a batch at a time
        n_train = manifest["files"]["train"]["rows"]
        keep, xs, ys, ys_all, at = sample_rows(n_train, p.evaluate.baseline_rows), [], [], [], 0
        for x, y in split_batches(data, "train", manifest, p.evaluate.bs):
            sel = in_sample(keep, at, len(y))
            xs.append(features(x.numpy()[sel]))  # pooled as it is read: a sample's features, not its pixels
            ys.append(y.numpy()[sel])
            ys_all.append(y.numpy())
            at += len(y)
        metrics |= baselines(np.concatenate(xs), np.concatenate(ys), np.concatenate(ys_all),
                             {s: ((x.numpy(), y.numpy()) for x, y in split_batches(data, s, manifest, p.evaluate.bs))
                              for s in ("val", "test")})
        return metrics, [f"accuracy {metrics['accuracy']:.4f} (val), {metrics['test_accuracy']:.4f} (test)",
                         f"baselines on val: linear {metrics['baseline_linear_val_accuracy']:.4f}, majority "
                         f"{metrics['baseline_majority_val_accuracy']:.4f}"]

    def registration(self, data: str, model: str) -> Registration:
        from components.data.dataset import iter_batches, open_split
        from components.data.parquet import load_manifest
        from components.model_file import read_metadata
        from components.store import verified_cache
        from components.workloads.image_classifier.data import IMAGES_SCHEMA, decode
        from components.workloads.image_classifier.pyfunc import log_model

        manifest = load_manifest(data)
        # the serving example without torch: register imports it only to re-score a champion
        val = open_split(data, "val", manifest, IMAGES_SCHEMA, verified_cache())
        example = decode(next(iter_batches(val.uris[:1], 1)))[0]

        def rescore(model_file: str) -> float:
            from components.workloads.image_classifier.evaluate import predict_split
            from components.workloads.image_classifier.model import load_model

            net, own = load_model(model_file)
            probs, y = predict_split(net, own, data, "val", manifest)  # streamed
            return float((probs.argmax(1) == y).float().mean())

        return Registration(read_metadata(model), rescore, lambda: log_model(model, example).model_uri)


WORKLOAD = ImageClassifier()
