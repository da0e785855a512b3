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

import torch

from components.data.parquet import file_md5, file_sha256, load_manifest, read_json, write_json
from components.data.text import Vocab
from components.evaluation.char_lm import load_published_model, read_split, score_ids
from components.tracking import registry, runs
from pipelines.common import main, params, paths

DATA_FILES = {"char_lm": ("train.parquet", "val.parquet", "vocab.json"),
              "image_classifier": ("train.parquet", "val.parquet", "stats.json")}


def git_commit() -> str:
    """HEAD's commit, with `-dirty` when tracked files differ; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lineage(workload: str, data_dir: Path, model: Path, blob: dict, run_id: str) -> dict[str, str]:
    """Tags that say where a version came from. Data hashes are md5 of the files this stage
    declares as deps: the same numbers DVC writes to dvc.lock."""
    tags = {f"trainyard.data.{data_dir / f}": file_md5(data_dir / f) for f in DATA_FILES[workload]}
    tags |= {"trainyard.git_commit": git_commit(), "trainyard.train_run_id": run_id,
             "trainyard.model_md5": file_md5(model), "trainyard.arch": blob["config"]["arch"],
             "trainyard.params": json.dumps(blob.get("train", {}), sort_keys=True)}
    return tags


def _rescore_images(x, y):
    """Accuracy of a registered image classifier on our val images."""
    import mlflow

    from components.evaluation.images import load_image_model, predict

    def rescore(version) -> float:
        with tempfile.TemporaryDirectory() as d:
            local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=d))
            model, blob = load_image_model(next(local.rglob("*.pt")))
        return float((predict(model, blob, x).argmax(1) == y).float().mean())
    return rescore


def _rescore(val_text: str):
    """Score a registered version on our val text, with that version's own vocabulary."""
    import mlflow

    def rescore(version) -> float:
        with tempfile.TemporaryDirectory() as d:
            local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=d))
            model_file = next(local.rglob("*.pt"))
            model, vocab, _ = load_published_model(model_file)
        return score_ids(model, torch.from_numpy(vocab.encode(val_text).astype("int64")))
    return rescore


def run(args: argparse.Namespace) -> None:
    p = getattr(params(args), args.workload).register_
    c = runs.client()
    data_dir, model_file = Path(args.data), Path(args.model)
    eval_metrics, train_metrics = read_json(args.eval), read_json(args.train_metrics)
    if p.metric not in eval_metrics:
        raise KeyError(f"{args.eval} has no metric '{p.metric}' ({args.workload}.register.metric); it has {sorted(eval_metrics)}")
    manifest = load_manifest(data_dir)
    if args.workload == "image_classifier":
        from components.evaluation.images import load_image_model, read_images
        from components.tracking.pyfunc import log_image_pyfunc

        _, blob = load_image_model(model_file)
        x, y = read_images(data_dir, "val", manifest)
        rescore = _rescore_images(x, y)
        example = x[0].permute(1, 2, 0).numpy()
        log = lambda: log_image_pyfunc(model_file, example).model_uri  # noqa: E731
    else:
        from components.tracking.pyfunc import log_pyfunc

        _, _, blob = load_published_model(model_file)
        vocab = Vocab.from_json(read_json(data_dir / "vocab.json"))
        rescore = _rescore(vocab.decode(read_split(data_dir, "val", manifest).tolist()))
        log = lambda: log_pyfunc(model_file).model_uri  # noqa: E731

    def log_model() -> str:
        import mlflow

        with mlflow.start_run(run_id=train_metrics["run_id"]):
            return log()

    out = registry.register(
        c, name=p.model_name, model_sha256=file_sha256(model_file), log_model=log_model,
        run_id=train_metrics["run_id"], metric=p.metric, value=float(eval_metrics[p.metric]), mode=p.mode,
        val_data_md5=file_md5(data_dir / "val.parquet"),
        lineage=lineage(args.workload, data_dir, model_file, blob, train_metrics["run_id"]), rescore=rescore)
    write_json(args.out, out)
    print(f"[register] {p.model_name} v{out['version']}: {out['decision']}; aliases {out['aliases']} -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--model", "--eval", "--train-metrics", "--data", "--out"), workloads=("char_lm", "image_classifier"))
