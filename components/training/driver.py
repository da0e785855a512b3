"""The Ray Train driver: data location, TorchTrainer, and what comes back from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.data.parquet import TOKENS_SCHEMA, check_table, load_manifest, read_json
from components.runtime import (
    ResourceError,
    free_resources_line,
    stage_data,
    start_attempts,
    start_timed_out,
    start_wait_s,
)


@dataclass(frozen=True)
class TrainData:
    """What a worker needs to find its shard: URIs every node can read, and sizes."""

    train_uri: str
    val_uri: str
    n_train: int
    n_val: int
    vocab_size: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _checked_and_staged(folder: Path, schema) -> tuple[dict[str, Any], dict[str, str]]:
    """Check train / val against the manifest (schema, rows, sha256), then stage them for workers."""
    manifest = load_manifest(folder)
    for split in ("train", "val"):
        check_table(folder / f"{split}.parquet", schema, manifest["files"][f"{split}.parquet"])
    return manifest, stage_data({"train": folder / "train.parquet", "val": folder / "val.parquet"})


def char_lm_data(folder: str | Path) -> TrainData:
    """Check the normalized token files and stage them for workers."""
    folder = Path(folder)
    manifest, uris = _checked_and_staged(folder, TOKENS_SCHEMA)
    vocab = read_json(folder / "vocab.json")
    return TrainData(uris["train"], uris["val"], manifest["files"]["train.parquet"]["rows"],
                     manifest["files"]["val.parquet"]["rows"], len(vocab["itos"]))


def image_data(folder: str | Path, flip: str | bool, crop: str | bool, source: str) -> dict[str, Any]:
    """Check the normalized image files and stage them for workers."""
    from components.data.images import IMAGES_SCHEMA

    folder = Path(folder)
    manifest, uris = _checked_and_staged(folder, IMAGES_SCHEMA)
    stats = read_json(folder / "stats.json")
    h, w, c = manifest["shape"]
    return {"train_uri": uris["train"], "val_uri": uris["val"],
            "n_train": manifest["files"]["train.parquet"]["rows"], "n_val": manifest["files"]["val.parquet"]["rows"],
            "shape": [c, h, w], "n_classes": len(stats["classes"]), "classes": stats["classes"],
            "mean": stats["mean"], "std": stats["std"],
            # digits must not be flipped (a mirrored 3 is no digit); other sets may be
            "flip": (source != "digits") if flip == "auto" else bool(flip),
            "crop": True if crop == "auto" else bool(crop)}


def loop_for(workload: str):
    """The per-worker training function of a workload."""
    if workload == "image_classifier":
        from components.training.image_loop import image_loop_per_worker

        return image_loop_per_worker
    from components.training.loop import train_loop_per_worker

    return train_loop_per_worker


def make_trainer(loop_config: dict[str, Any], *, name: str, storage_path: str, num_workers: int,
                 cpus_per_worker: float, use_gpu: bool, max_failures: int, callbacks: list | None = None,
                 workload: str = "char_lm", placement: str = "pack"):
    """A TorchTrainer over the workload's per-worker loop, resumable by (`storage_path`, `name`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start_wait_s()  # a bad TRAINYARD_WORKER_START_TIMEOUT_S fails here, before any compute
    return TorchTrainer(
        loop_for(workload),
        train_loop_config={**loop_config, "cpus_per_worker": cpus_per_worker},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, placement_strategy=placement.upper(),
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            # Ray Train restarts the worker group from the last reported checkpoint.
            # and gives up placing its workers after TRAINYARD_WORKER_START_TIMEOUT_S.
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=start_attempts()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or []),
    )


@dataclass(frozen=True)
class TrainOutcome:
    """The final checkpoint's state and where the run lives."""

    state: dict[str, Any]
    run_path: str
    num_workers: int


def fit(trainer, num_workers: int) -> TrainOutcome:
    """Run the trainer and load the last checkpoint it reported."""
    from components.training.checkpoints import load_state

    try:
        result = trainer.fit()
    except Exception as err:
        if start_timed_out(err):
            scaling = trainer.scaling_config
            raise ResourceError(
                f"the {num_workers} training workers ({scaling.resources_per_worker or {'CPU': 1}} each) could not be "
                f"placed within {start_wait_s():g} s ({free_resources_line()} now): other jobs hold the cluster; "
                f"raise TRAINYARD_WORKER_START_TIMEOUT_S to wait longer") from err
        raise
    if result.checkpoint is None:
        raise RuntimeError("training finished without reporting a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    return TrainOutcome(state=state, run_path=result.path, num_workers=num_workers)
