"""The stages' work in one process, without DVC, MLflow or a sweep: prepare -> normalize -> train
-> evaluate of one workload with the params given (hand-set values), under a work folder. For
benchmarks and tests that train the same pipeline on many data sets (`bench/corpora.py`).
Not a stage: `dvc repro` never runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.training.launch import Launch, launch
from components.workloads import get


def fit_and_score(workload: str, p: Any, work: str | Path, name: str = "run") -> dict[str, Any]:
    """Run `workload`'s stages with params `p` (its params section) under `work`; Ray must be up
    unless the run trains in this process (one worker, `in_process`, no RAY_ADDRESS: as train
    decides, `components.training.launch`). Returns evaluate's metrics (model and baselines)
    plus the train run's summary."""
    w, work = get(workload), Path(work)
    w.prepare(p, str(work / "prepared"))
    w.normalize(p, str(work / "prepared"), str(work / "normalized"))
    cfg = p.train.model_dump()
    data = w.training_data(str(work / "normalized"), cfg, p).workers
    out = launch(w.worker_loop(), {"train": cfg, "data": data}, Launch.of(cfg, False, w.select, max_failures=0),
                 name=name, storage=str(work / "runs"))
    w.publish(work / "model.pt", out.published, str(work / "normalized"), data, cfg)
    (work / "reports").mkdir(exist_ok=True)
    metrics, _ = w.evaluate(p, str(work / "normalized"), str(work / "model.pt"), work / "reports", work / "evaluate")
    hist = out.state["history"]
    return metrics | {"epochs": len(hist), "published_epoch": out.best["epoch"], "train_s": hist[-1]["train_s"],
                      "steps": hist[-1].get("step"), **{k: data[k] for k in ("vocab_size", "n_train") if k in data}}
