r"""evaluate: score the trained model on val and test; logged to the training run.

char_lm: loss (nats/char), bits/char, perplexity, and samples from a prompt at two
temperatures. image_classifier: accuracy, per-class accuracy, a confusion matrix (PNG and
`dvc plots` CSV) and class activation maps for a few validation images.

    python -m pipelines.evaluate --workload char_lm --data data/char_lm/normalized \
        --model models/char_lm/model.pt --train-metrics metrics/char_lm/train.json \
        --metrics metrics/char_lm/eval.json --reports reports/char_lm
"""

from __future__ import annotations

import argparse
import time

from mlflow.entities import Metric

from components.config import EvaluateParams, ImageEvaluateParams
from components.data.parquet import load_manifest, read_json, staging_dir, write_json
from components.evaluation.char_lm import (
    load_published_model,
    loss_metrics,
    read_split,
    sample_text,
    score_ids,
)
from components.evaluation.images import (
    classification_metrics,
    load_image_model,
    plot_cams,
    plot_confusion,
    predict,
    read_images,
)
from components.tracking import runs
from pipelines.common import main, params, paths


def evaluate_char_lm(args: argparse.Namespace, p: EvaluateParams) -> dict:
    """Score the model on val and test, write metrics and samples, log both to the train run."""
    c = runs.client()
    run_id = read_json(args.train_metrics)["run_id"]
    model, vocab, blob = load_published_model(args.model)
    manifest = load_manifest(args.data)
    t0 = time.perf_counter()
    metrics: dict = {}
    for split in ("val", "test"):
        metrics |= loss_metrics(split, score_ids(model, read_split(args.data, split, manifest)))
    metrics["eval_s"] = time.perf_counter() - t0
    temps = sorted({p.temperature, 1.0})
    samples = {t: sample_text(model, vocab, p.prompt, p.n_chars, t, p.seed) for t in temps}
    with staging_dir(args.reports) as tmp:
        (tmp / "samples.txt").write_text("".join(f"--- temperature {t} ---\n{s}\n\n" for t, s in samples.items()))
    write_json(args.metrics, metrics)
    _log(c, run_id, metrics, args.reports)
    return metrics | {"sample": samples[p.temperature]}


def _log(c, run_id: str, metrics: dict, reports: str) -> None:
    now = int(time.time() * 1000)
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    c.log_batch(run_id, metrics=[Metric(f"eval_{k}", float(v), now, 0) for k, v in flat.items()])
    c.log_artifacts(run_id, reports, artifact_path="evaluation")


def evaluate_images(args: argparse.Namespace, p: ImageEvaluateParams) -> dict:
    """Accuracy, per-class accuracy, confusion matrix and CAMs; logged to the train run."""
    c = runs.client()
    run_id = read_json(args.train_metrics)["run_id"]
    model, blob = load_image_model(args.model)
    manifest = load_manifest(args.data)
    classes = blob["classes"]
    metrics: dict = {}
    with staging_dir(args.reports) as tmp:
        for split in ("val", "test"):
            x, y = read_images(args.data, split, manifest)
            probs = predict(model, blob, x)
            m, conf = classification_metrics(split, probs, y, classes)
            metrics |= m
            plot_confusion(tmp / f"confusion_{split}.png", conf, classes, f"{split}: accuracy {m['accuracy' if split == 'val' else 'test_accuracy']:.4f}")
            if split == "val":
                pred = probs.argmax(1)
                (tmp / "confusion.csv").write_text("actual,predicted\n" + "".join(
                    f"{classes[a]},{classes[b]}\n" for a, b in zip(y.tolist(), pred.tolist(), strict=True)))
                if hasattr(model, "features"):
                    plot_cams(tmp / "cam.png", model, blob, x[:p.n_cam], y[:p.n_cam])
    write_json(args.metrics, metrics)
    _log(c, run_id, metrics, args.reports)
    return metrics


def run(args: argparse.Namespace) -> None:
    if args.workload == "image_classifier":
        m = evaluate_images(args, params(args).image_classifier.evaluate)
        print(f"[evaluate] accuracy {m['accuracy']:.4f} (val), {m['test_accuracy']:.4f} (test) -> {args.metrics}, {args.reports}/")
        return
    m = evaluate_char_lm(args, params(args).char_lm.evaluate)
    print(f"[evaluate] val_loss {m['val_loss']:.4f} ({m['val_bits_per_char']:.3f} bits/char, "
          f"perplexity {m['val_perplexity']:.2f}), test_loss {m['test_loss']:.4f}")
    print(f"[evaluate] sample:\n{m['sample']}")



if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--train-metrics", "--metrics", "--reports"),
         workloads=("char_lm", "image_classifier"))
