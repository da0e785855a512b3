r"""register: a new registry version (once per trained model) with lineage, alias
`challenger`, and `champion` only if it beats the current champion on the same val data.

    python -m pipelines.register --workload char_lm --model models/char_lm/model.pt \
        --eval metrics/char_lm/eval.json --train-metrics metrics/char_lm/train.json \
        --data data/char_lm/normalized --out registry/char_lm/registered.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from components.cli.entry import main, paths, workload
from components.data.parquet import file_md5, file_sha256, read_json, write_json
from components.tracking import registry
from components.tracking.session import connect
from components.workloads.base import Workload


def git_commit() -> str:
    """HEAD's commit, with `-dirty` when tracked files differ; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage(w: Workload, data_dir: Path, model: Path, blob: dict, run_id: str) -> dict[str, str]:
    """Tags that say where a version came from. Data hashes are md5 of the files this stage
    declares as deps: the same numbers DVC writes to dvc.lock."""
    tags = {f"trainyard.data.{data_dir / f}": file_md5(data_dir / f) for f in w.data_files}
    tags |= {"trainyard.git_commit": git_commit(), "trainyard.train_run_id": run_id,
             "trainyard.model_md5": file_md5(model), "trainyard.arch": blob["config"]["arch"],
             "trainyard.params": json.dumps(blob.get("train", {}), sort_keys=True)}
    return tags


def _rescore(rescore_file):
    """Score a registered version (its model file, downloaded) on our val data."""
    import mlflow

    def rescore(version) -> float:
        with tempfile.TemporaryDirectory() as d:
            local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=d))
            return rescore_file(str(next(local.rglob("*.pt"))))
    return rescore


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    reg = p.register_
    t = connect(args.tracking_uri)
    data_dir, model_file = Path(args.data), Path(args.model)
    eval_metrics, train_metrics = read_json(args.eval), read_json(args.train_metrics)
    if reg.metric not in eval_metrics:
        raise KeyError(f"{args.eval} has no metric '{reg.metric}' ({args.workload}.register.metric); "
                       f"it has {sorted(eval_metrics)}")
    parts = w.registration(args.data, args.model)

    def log_model() -> str:
        import mlflow

        with mlflow.start_run(run_id=train_metrics["run_id"]):
            return parts.log_model()

    out = registry.register(
        t.client, name=reg.model_name, model_sha256=file_sha256(model_file), log_model=log_model,
        run_id=train_metrics["run_id"], metric=reg.metric, value=float(eval_metrics[reg.metric]), mode=reg.mode,
        val_data_md5=file_md5(data_dir / "val.parquet"),
        lineage=lineage(w, data_dir, model_file, parts.blob, train_metrics["run_id"]),
        rescore=_rescore(parts.rescore), floor=w.floor(eval_metrics))
    write_json(args.out, out)
    print(f"[register] {reg.model_name} v{out['version']}: {out['decision']}; aliases {out['aliases']} -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--model", "--eval", "--train-metrics", "--data", "--out"))
