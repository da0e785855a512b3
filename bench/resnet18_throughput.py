"""ResNet-18 training throughput (images/s) on 32x32x3 inputs: one Ray Train worker vs two,
on CPU (and on a GPU where the cluster has one). Measured side by side in one run.

    python bench/resnet18_throughput.py --steps 20
    python bench/resnet18_throughput.py --runs cpu1,gpu1 --steps 10 --bs 128   # on a GPU machine

Synthetic CIFAR-shaped data in the pipeline's Parquet schema; the first epoch is warm-up,
the second is timed. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after as many warm-up steps)")
    ap.add_argument("--bs", type=int, default=64, help="images per step in total")
    ap.add_argument("--runs", default="cpu1,cpu2,gpu1",
                    help="device and worker count of each run, in order (gpu runs only where the cluster has GPUs)")
    args = ap.parse_args()
    runs = [(r[:3], int(r[3:]) if r[3:].isdigit() else 0) for r in args.runs.split(",")]
    if bad := [r for r in runs if r[0] not in ("cpu", "gpu") or r[1] < 1]:
        raise SystemExit(f"error: --runs: {bad} are not of the form cpu<N> or gpu<N>")

    import torch

    from components.cluster.connect import init_ray
    from components.data.parquet import write_table
    from components.training.driver import fit, make_trainer
    from components.workloads.image_classifier.data import ImageSet, images_table
    from components.workloads.image_classifier.loop import train_loop_per_worker
    from components.workloads.image_classifier.params import ImageTrainParams

    rng = np.random.default_rng(0)
    n = 4096
    s = ImageSet(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), [str(i) for i in range(10)])
    resources = init_ray()
    runs = [(d, w) for d, w in runs if d == "cpu" or resources.get("GPU", 0) >= w]
    out = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for split in ("train", "val"):
            write_table(work / f"{split}.parquet", images_table(s, np.full(n, split)), row_group_size=1024)
        data = {"train_uri": str(work / "train.parquet"), "val_uri": str(work / "val.parquet"), "n_train": n,
                "n_val": 256, "shape": [3, 32, 32], "n_classes": 10, "classes": s.classes,
                "mean": [0.5] * 3, "std": [0.29] * 3, "flip": True, "crop": True}
        for device, workers in runs:
            cfg = ImageTrainParams(arch="resnet18", num_workers=workers, bs=args.bs, epochs=2,
                                   steps_per_epoch=args.steps, schedule="constant").model_dump()
            t0 = time.perf_counter()
            res = fit(make_trainer(train_loop_per_worker, {"train": cfg, "data": data}, name=f"tp-{device}-{workers}-{int(time.time())}",
                                   storage_path=str(work / "runs"), num_workers=workers, cpus_per_worker=1,
                                   use_gpu=device == "gpu", max_failures=0), workers)
            timed = res.state["history"][-1]
            key = f"{device}_{workers}w_images_per_s"
            out[key] = round(timed["images_per_s"], 1)
            print(f"{device}, {workers} worker(s): {timed['images_per_s']:.1f} images/s "
                  f"(timed epoch {timed['epoch_s']:.1f} s; run {time.perf_counter() - t0:.0f} s in all)", flush=True)
    base = out.get("cpu_1w_images_per_s")
    for key in [k for k in out if k != "cpu_1w_images_per_s"]:
        if base:  # every other run against one CPU worker, measured in the same run
            out[key.replace("_images_per_s", "_vs_cpu_1w")] = round(out[key] / base, 3)
            print(f"{key.removesuffix('_images_per_s')} / cpu_1w: {out[key] / base:.2f}x")
    out |= {"bs": args.bs, "steps": args.steps, "torch_threads_per_worker": 1, "torch": torch.__version__}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
