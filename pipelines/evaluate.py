r"""evaluate: score the trained model on val and test (the workload decides the metrics and
reports: loss, bits/char and samples for the char-LM; accuracy, confusion matrices and class
activation maps for the image classifier); logged to the training run.

    python -m pipelines.evaluate --workload char_lm --data data/char_lm/normalized \
        --model models/char_lm/model.pt --metrics metrics/char_lm/eval.json --reports reports/char_lm
"""

from __future__ import annotations

import argparse
import time

from mlflow.entities import Metric

from components import timings
from components.cli.entry import main, paths, workload
from components.data.parquet import staging_dir, write_json
from components.run_keys import run_key
from components.store import local_state_dir
from components.tracking import runs
from components.tracking.session import connect


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    t = connect(args.tracking_uri)
    run_id = runs.train_run_id(args.model, args.train_run)
    # what evaluate keeps to resume (a comparison model's training) is keyed like a train run:
    # the code, the params, and every model and data file it declares (a new model: anew)
    key = run_key("evaluate", args.workload, p.evaluate.model_dump(), inputs=(args.data, args.model, args.train_run),
                  params_file=args.params)
    state = local_state_dir() / args.workload / "evaluate" / f"run-{key.key}"
    with staging_dir(args.reports) as tmp, timings.work():
        metrics, lines = w.evaluate(p, args.data, args.model, tmp, state)
    write_json(args.metrics, metrics)
    now = int(time.time() * 1000)
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    t.client.log_batch(run_id, metrics=[Metric(f"eval_{k}", float(v), now, 0) for k, v in flat.items()])
    t.client.log_artifacts(run_id, args.reports, artifact_path="evaluation")
    t.client.log_dict(run_id, metrics, "evaluation/eval.json")  # all of it (per-class too), for `registry review`
    runs.log_datasets(t.client, run_id, args.data, {"test.parquet": "testing"}, args.workload)
    print(f"[evaluate] {lines[0]} -> {args.metrics}, {args.reports}/")
    for line in lines[1:]:
        print(f"[evaluate] {line}")


if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--metrics", "--reports", optional=("--train-run",)))
