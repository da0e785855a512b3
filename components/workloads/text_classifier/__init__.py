"""The text-classifier workload (fast.ai lesson 10): the char-LM fine-tuned into a classifier
of a passage's genre, ULMFiT-style, against the same classifier trained from scratch.

    params.py   its params.yaml section           staging.py  prepare / normalize / what workers read
    data.py     documents, the split by document  model.py    the classifier, ULMFiT's schedule, its model file
    loop.py     the worker loop                   evaluate.py accuracy, confusion, baselines, scratch twin
    pyfunc.py   the registered MLflow model       lm.py       the general LM fine-tuned on the train books
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.workloads.base import Registration, TrainingData, Workload
from components.workloads.text_classifier.params import TextClassifierParams


class TextClassifier(Workload):
    name = "text_classifier"
    params = TextClassifierParams
    data_meta = "classes.json"
    live_metrics = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "groups_trained")
    headline = ("lr", "dropout", "unfreeze_every", "encoder")
    extra_stages = ("adapt",)  # ULMFiT's second step: the general LM fine-tuned on the train books
    base_dep = "train.encoder_model"  # the LM model file its encoder starts from (adapt's output)
    registered_after = "char_lm"  # its version tags name the char-LM version it came from
    model_key = "head"  # train.head may name the user's own head by import path
    stage_modules = {"prepare": ("staging",), "normalize": ("staging",), "adapt": ("lm", "staging"),
                     "tune": ("staging", "loop"),
                     "train": ("staging", "loop", "model"), "evaluate": ("evaluate", "model"),
                     "register": ("pyfunc", "model", "evaluate", "staging")}
    select = ("val_accuracy", "max")  # the epoch published: see TextTuneParams.metric
    baseline_metric = "val_accuracy"

    def prepare(self, p: TextClassifierParams, out: str) -> str:
        from components.workloads.text_classifier.staging import prepare_texts

        m = prepare_texts(p.prepare, out)
        held = ", ".join(f"{s} {len(v)}" for s, v in m["held_out"].items())
        extra = f"; classes too small to hold a document out: {m['train_only_classes']}" if m["train_only_classes"] else ""
        return (f"{m['documents']} documents -> {m['rows']} passages of {p.prepare.passage_chars} characters, "
                f"splits {m['splits']} (documents held out: {held}){extra} -> {out}")

    def normalize(self, p: TextClassifierParams, src: str, out: str) -> str:
        from components.workloads.text_classifier.staging import normalize_texts

        m = normalize_texts(src, out, p.normalize, p.prepare.seed)
        rows = {k: v["rows"] for k, v in m["files"].items()}
        return f"{rows}, classes {m['classes']} -> {out}"

    def adapt(self, p: TextClassifierParams, data: str, out: str) -> str:
        from components.workloads.text_classifier.lm import fine_tune
        from components.workloads.text_classifier.staging import train_passages

        a = p.adapt
        texts = train_passages(data, a.steps, a.bs, a.seed)  # the train books only, streamed: never val or test
        s = fine_tune(a.base_model, texts, out, steps=a.steps, bs=a.bs, lr=a.lr, lr_factor=a.lr_factor,
                      cut_frac=a.cut_frac, stlr_ratio=a.stlr_ratio, weight_decay=a.weight_decay, seed=a.seed)
        return (f"{a.base_model} fine-tuned on the {s['passages']} train passages, {s['steps']} steps of {a.bs}: "
                f"train loss {s['first_loss']:.4f} -> {s['last_loss']:.4f} nats/char ({s['seconds']:.0f} s) -> {out}")

    def training_data(self, folder: str, train: dict[str, Any], p: TextClassifierParams) -> TrainingData:
        from components.workloads.text_classifier.staging import training_data

        data = training_data(folder, train["encoder_model"])
        enc = data["encoder"]
        full = p.train.model_dump() | train  # a sweep's base lacks the searched keys: the section's stand in
        if full["head"] != "concat_pool":  # the user's head: built and run once here, before any compute
            from components.workloads.modules import check_head

            check_head(full["head"], "text_classifier.train.head", 3 * enc["n_hidden"], data["n_classes"],
                       full["dropout"])
        return TrainingData(data, {"n_classes": data["n_classes"], "n_train": data["n_train"],
                                   "encoder_arch": enc["arch"], "encoder_n_hidden": enc["n_hidden"],
                                   "encoder_n_layers": enc["n_layers"]})

    def worker_loop(self) -> Callable[[dict[str, Any]], None]:
        from components.workloads.text_classifier.loop import train_loop_per_worker

        return train_loop_per_worker

    def publish(self, path: str | Path, state: dict[str, Any], folder: str, data: dict[str, Any],
                train: dict[str, Any]) -> None:
        from components.workloads.text_classifier.model import publish_model

        publish_model(path, state, data, train)

    def evaluate(self, p: TextClassifierParams, data: str, model: str,
                 reports: Path, state: Path) -> tuple[dict[str, Any], list[str]]:
        from components.data.parquet import load_manifest
        from components.evaluation import classification_metrics, plot_confusion
        from components.workloads.text_classifier.evaluate import (
            majority_baseline,
            predict_split,
            split_batches,
            tfidf_baseline,
            train_sample,
            train_twin,
        )
        from components.workloads.text_classifier.model import load_model

        net, blob = load_model(model)
        manifest, classes = load_manifest(data), blob["classes"]

        def score(net, blob, prefix: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for split in ("val", "test"):  # streamed: a batch of passages at a time
                probs, y = predict_split(net, blob, data, split, manifest)
                m, conf = classification_metrics(split, probs, y, classes)
                out |= {f"{prefix}{k}": v for k, v in m.items()}
                labels[split] = y
                if not prefix:
                    acc = m["accuracy" if split == "val" else "test_accuracy"]
                    plot_confusion(reports / f"confusion_{split}.png", conf, classes, f"{split} (unseen documents): "
                                   f"accuracy {acc:.4f}")
            return out

        labels: dict[str, Any] = {}
        metrics = score(net, blob, "")
        sample, y_sample, y_train = train_sample(data, manifest, p.evaluate.tfidf_rows, p.prepare.seed)
        metrics |= majority_baseline(y_train, labels)
        lines = [f"accuracy {metrics['accuracy']:.4f} (val), {metrics['test_accuracy']:.4f} (test, unseen documents)",
                 f"majority baseline: {metrics['baseline_majority_val_accuracy']:.4f} (val), "
                 f"{metrics['baseline_majority_test_accuracy']:.4f} (test)"]
        metrics |= tfidf_baseline((sample, y_sample), {s: split_batches(data, s, manifest, 1024) for s in ("val", "test")},
                                  p.prepare.seed)
        del sample
        lm = blob.get("fine_tuned_from") or {}
        twins = {"scratch": (None, p.evaluate.scratch, "from scratch"),
                 "general": ((lm.get("base") or {}).get("file"), p.evaluate.general,
                             "on the general LM, without fine-tuning it on the train books")}
        for name, (encoder, wanted, what) in twins.items():
            if not (wanted and lm and (encoder or name == "scratch")):
                continue
            print(f"[evaluate] training the same classifier {what}, with the same budget", flush=True)
            t_net, t_blob = load_model(train_twin(data, manifest, blob, str(state / name), self.select, encoder))
            twin = score(t_net, t_blob, f"{name}_")
            gain = metrics["test_accuracy"] - twin[f"{name}_test_accuracy"]
            metrics |= {f"{name}_accuracy": twin[f"{name}_accuracy"],
                        f"{name}_test_accuracy": twin[f"{name}_test_accuracy"],
                        f"{'finetune' if name == 'scratch' else 'adapt'}_gain_test_accuracy": gain}
            lines.append(f"{what}: {twin[f'{name}_accuracy']:.4f} (val), {twin[f'{name}_test_accuracy']:.4f} (test): "
                         f"the model {gain:+.4f} on test")
        return metrics, lines

    def registration(self, data: str, model: str) -> Registration:
        from components.data.dataset import iter_batches, open_split
        from components.data.parquet import load_manifest
        from components.model_file import read_metadata
        from components.store import verified_cache
        from components.workloads.text_classifier.pyfunc import log_model
        from components.workloads.text_classifier.staging import SPLIT_SCHEMA

        manifest, blob = load_manifest(data), read_metadata(model)
        # the serving example without torch: register imports it only to re-score a champion
        val = open_split(data, "val", manifest, SPLIT_SCHEMA, verified_cache())
        example = next(iter_batches(val.uris[:1], 1, ["text"])).column("text")[0].as_py()

        def rescore(model_file: str) -> float:
            from components.workloads.text_classifier.evaluate import predict_split
            from components.workloads.text_classifier.model import load_model

            net, own = load_model(model_file)
            probs, y = predict_split(net, own, data, "val", manifest)  # streamed
            return float((probs.argmax(1) == y).float().mean())

        return Registration(blob, rescore, lambda: log_model(model, example).model_uri, base_lineage(blob))


def base_lineage(blob: dict[str, Any]) -> dict[str, str]:
    """Tags naming both language models of ULMFiT's lineage: the general char-LM (whose md5 finds
    its registered version: register adds it) and the LM adapted to the train books that the
    encoder started from; the general one only when the classifier was trained on it directly,
    none from scratch."""
    from components.tracking.registry import BASE_MD5_TAG

    lm = blob.get("fine_tuned_from")
    if not lm:
        return {}
    general = lm.get("base") or lm
    tags = {BASE_MD5_TAG: general["md5"], "trainyard.base.file": general["file"]}
    if lm.get("base"):
        tags |= {"trainyard.adapted_lm.file": lm["file"], "trainyard.adapted_lm.md5": lm["md5"]}
    return tags


WORKLOAD = TextClassifier()
