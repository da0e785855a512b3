r"""register: a new registry version (once per trained model) with lineage, alias
`challenger`, and `champion` only if it beats the current champion on the same val data.

    python -m pipelines.register --workload char_lm --model models/char_lm/model.pt \
        --eval metrics/char_lm/eval.json --data data/char_lm/normalized --out registry/char_lm/registered.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from components import timings
from components.cli.entry import main, paths, workload
from components.data.dataset import data_digest
from components.data.parquet import file_md5, file_sha256, read_json, write_json
from components.tracking import registry, runs
from components.tracking.server import TrackingError
from components.tracking.session import connect
from components.workloads.base import Workload
from components.workloads.modules import spec_files


def lineage(w: Workload, data_dir: Path, model: Path, blob: dict, run_id: str) -> dict[str, str]:
    """Tags that say where a version came from. Data hashes are md5 of the files this stage
    declares as deps: the same numbers DVC writes to dvc.lock."""
    digests = {f: data_digest(data_dir, f) for f in w.data_files}  # a split's from its manifest: no data read
    tags = {f"trainyard.data.{data_dir / f}": md5 for f, (md5, _) in digests.items()}
    tags[registry.ROWS] = json.dumps({str(data_dir / f): rows for f, (_, rows) in digests.items() if rows is not None})
    tags |= {k: v for k, v in runs.source_tags().items() if k.startswith("trainyard.dvc_exp")}
    tags |= {"trainyard.git_commit": runs.git_commit(), "trainyard.train_run_id": run_id,
             "trainyard.model_md5": file_md5(model), "trainyard.arch": w.arch(blob["config"]),
             "trainyard.params": json.dumps(blob.get("train", {}), sort_keys=True)}
    if files := spec_files(w.model_spec(blob), Path.cwd()):  # a model by import path: the code that built it
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.encode() + b"\0" + Path(f).read_bytes() + b"\0")
        tags["trainyard.model_code"] = json.dumps({"files": files, "sha256": digest.hexdigest()})
    return tags


def attach_metrics(c, run_id: str, model_uri: str, metrics: dict, data_dir: Path, name: str) -> None:
    """Evaluate's numbers on the logged model (MLflow 3's model page lists them), each linked
    to the dataset it was measured on: `test_*` to the test split, the rest to val."""
    import time

    from mlflow.entities import Metric

    model_id = model_uri.removeprefix("models:/").split("/")[0]
    digests = {s: data_digest(data_dir, s)[0] for s in ("val", "test")}
    now = int(time.time() * 1000)
    out = []
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            split = "test" if "test" in k else "val"
            out.append(Metric(f"eval_{k}", float(v), now, 0, model_id=model_id,
                              dataset_name=f"{name}/{split}", dataset_digest=digests[split]))
    for i in range(0, len(out), 500):
        c.log_batch(run_id, metrics=out[i:i + 500])


def _rescore(rescore_file):
    """Score a registered version (its model file, downloaded) on our val data."""
    import mlflow

    def rescore(version) -> float:
        with tempfile.TemporaryDirectory() as d:
            local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=d))
            with timings.work():
                return rescore_file(str(next(local.rglob("*.pt"))))
    return rescore


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    reg = p.register_
    try:
        with timings.clock("connect_s"):
            t = connect(args.tracking_uri)
    except TrackingError as err:
        raise TrackingError(f"{err}: register cannot read {reg.model_name}@champion, so it registers and crowns "
                            "nothing; run it again when the server answers (what earlier stages journaled "
                            "is sent first)") from None
    data_dir, model_file = Path(args.data), Path(args.model)
    eval_metrics, train_run = read_json(args.eval), runs.train_run_id(args.model, args.train_run)
    if reg.metric not in eval_metrics:
        raise KeyError(f"{args.eval} has no metric '{reg.metric}' ({args.workload}.register.metric); "
                       f"it has {sorted(eval_metrics)}")
    parts = w.registration(args.data, args.model)
    tags = lineage(w, data_dir, model_file, parts.blob, train_run) | parts.lineage
    if (base_md5 := tags.get(registry.BASE_MD5_TAG)) and (base_name := getattr(reg, "base_model_name", None)):
        # the base model's version, found by its file's md5; a file never registered says so
        found = registry.base_version(t.client, base_name, base_md5)
        tags["trainyard.base.version"] = f"{base_name} v{found}" if found else f"{base_name}: not registered"

    def log_model() -> str:
        import mlflow

        with mlflow.start_run(run_id=train_run):
            uri = parts.log_model()
        attach_metrics(t.client, train_run, uri, eval_metrics, data_dir, args.workload)
        return uri

    timings.mark("decide")  # the store open, the model's metadata and lineage read
    out = registry.register(
        t.client, name=reg.model_name, model_sha256=file_sha256(model_file), log_model=log_model,
        run_id=train_run, metric=reg.metric, value=float(eval_metrics[reg.metric]), mode=reg.mode,
        val_data_md5=data_digest(data_dir, "val")[0],
        lineage=tags,
        rescore=_rescore(parts.rescore), floor=w.floor(eval_metrics), min_delta=reg.min_delta,
        require_approval=reg.require_approval)
    write_json(args.out, out)
    print(f"[register] {reg.model_name} v{out['version']}: {out['decision']}; aliases {out['aliases']} -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--model", "--eval", "--data", "--out", optional=("--train-run",)))
