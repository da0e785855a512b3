r"""evaluate: val and test loss (nats/char), bits/char, perplexity, and samples from a prompt.

    python -m pipelines.evaluate --workload char_lm --data data/char_lm/normalized \
        --model models/char_lm/model.pt --train-metrics metrics/char_lm/train.json \
        --metrics metrics/char_lm/eval.json --samples reports/char_lm/samples.txt
"""

from __future__ import annotations

import argparse
import time

from mlflow.entities import Metric

from components.config import EvaluateParams
from components.data.parquet import atomic_path, load_manifest, read_json, write_json
from components.evaluation.char_lm import (
    load_published_model,
    loss_metrics,
    read_split,
    sample_text,
    score_ids,
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
    with atomic_path(args.samples) as tmp:
        tmp.write_text("".join(f"--- temperature {t} ---\n{s}\n\n" for t, s in samples.items()))
    write_json(args.metrics, metrics)
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(f"eval_{k}", float(v), now, 0) for k, v in metrics.items()])
    c.log_artifact(run_id, args.samples)
    return metrics | {"sample": samples[p.temperature]}


def run(args: argparse.Namespace) -> None:
    m = evaluate_char_lm(args, params(args).char_lm.evaluate)
    print(f"[evaluate] val_loss {m['val_loss']:.4f} ({m['val_bits_per_char']:.3f} bits/char, "
          f"perplexity {m['val_perplexity']:.2f}), test_loss {m['test_loss']:.4f}")
    print(f"[evaluate] sample:\n{m['sample']}")



if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--train-metrics", "--metrics", "--samples"))
