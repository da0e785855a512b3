r"""evaluate: score the trained model on val and test (the workload decides the metrics and
reports: loss, bits/char and samples for the char-LM; accuracy, confusion matrices and class
activation maps for the image classifier); logged to the training run.

    python -m pipelines.evaluate --workload char_lm --data data/char_lm/normalized \
        --model models/char_lm/model.pt --metrics metrics/char_lm/eval.json --reports reports/char_lm
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from components import timings
from components.cli.entry import main, paths, workload
from components.data.parquet import staging_dir, write_json
from components.run_keys import run_key
from components.store import local_state_dir
from components.tracking import runs
from components.tracking.journal import Writer
from components.tracking.session import connect


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    # evaluate writes to the train run only: with the server away it scores and publishes
    # anyway, and its MLflow writes wait in the journal for the next stage
    t = connect(args.tracking_uri, outage_ok=True)
    run_id = runs.train_run_id(args.model, args.train_run)
    # what evaluate keeps to resume (a comparison model's training) is keyed like a train run:
    # the code, the params, and every model and data file it declares (a new model: anew)
    key = run_key("evaluate", args.workload, p.evaluate.model_dump(), inputs=(args.data, args.model, args.train_run),
                  params_file=args.params)
    state = local_state_dir() / args.workload / "evaluate" / f"run-{key.key}"
    with staging_dir(args.reports) as tmp, timings.work():
        metrics, lines = w.evaluate(p, args.data, args.model, tmp, state)
    write_json(args.metrics, metrics)
    _log(Writer(t.uri), run_id, metrics, Path(args.reports), args.data, args.workload)
    print(f"[evaluate] {lines[0]} -> {args.metrics}, {args.reports}/")
    for line in lines[1:]:
        print(f"[evaluate] {line}")


def _log(writer: Writer, run_id: str, metrics: dict, reports: Path, data: str, workload: str) -> None:
    """evaluate's numbers (`eval_*`), its reports and eval.json (per-class figures too, for
    `registry review`) and the test split as a dataset input, on the train run; journaled while
    the server is away."""
    flat = {f"eval_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    writer.write({"op": "sample", "run_id": run_id, "step": 0, "values": flat})
    for f in sorted(p for p in reports.rglob("*") if p.is_file()):
        rel = f.parent.relative_to(reports)
        writer.log_artifact(run_id, f, "evaluation" if rel == Path(".") else f"evaluation/{rel}")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "eval.json").write_text(json.dumps(metrics, indent=2))
        writer.log_artifact(run_id, Path(d) / "eval.json", "evaluation")
    writer.write({"op": "datasets", "run_id": run_id,
                  "entries": runs.dataset_entries(data, {"test": "testing"}, workload)})
    writer.settle_or_report()


if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--model", "--metrics", "--reports", optional=("--train-run",)))
