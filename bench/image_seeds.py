"""Test accuracy of the default image classifier (params.yaml) over several training seeds.

    python bench/image_seeds.py --seeds 5

Digits, the default split; each seed is one Ray Train run (2 workers) with the params.yaml
`image_classifier.train` values (use_tuned is ignored: the hand-set lr / dropout / weight decay
are used). Prints each seed, then mean and minimum; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.params import load_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an image_classifier.train key (YAML value), e.g. --set epochs=60; repeatable")
    args = ap.parse_args()

    from components.cluster.connect import init_ray
    from components.data.parquet import load_manifest
    from components.evaluation import classification_metrics
    from components.training.driver import fit, make_trainer
    from components.workloads import get
    from components.workloads.image_classifier.evaluate import predict, read_images
    from components.workloads.image_classifier.model import load_model

    w = get("image_classifier")
    p = load_params(args.params).image_classifier
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in type(p.train).model_fields:
            ap.error(f"--set {item!r}: expected KEY=VALUE with KEY an image_classifier train key")
        overrides[key] = yaml.safe_load(value)
    p = p.model_copy(update={"train": type(p.train).model_validate(p.train.model_dump() | overrides)})
    results, train_s = [], []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        w.prepare(p, str(work / "prepared"))
        w.normalize(p, str(work / "prepared"), str(work / "normalized"))
        data = w.training_data(str(work / "normalized"), p.train.model_dump(), p).workers
        x, y = read_images(work / "normalized", "test", load_manifest(work / "normalized"))
        init_ray()
        for seed in range(args.seeds):
            cfg = p.train.model_dump() | {"seed": seed}
            t0 = time.perf_counter()
            out = fit(make_trainer(w.worker_loop(), {"train": cfg, "data": data}, name=f"seed-{seed}-{int(time.time())}",
                                   storage_path=str(work / "runs"), num_workers=cfg["num_workers"],
                                   cpus_per_worker=cfg["cpus_per_worker"], use_gpu=False, max_failures=0,
                                   select=w.select),
                      cfg["num_workers"], w.select)
            # as train publishes: the best epoch by the workload's select metric
            w.publish(work / "m.pt", out.published, str(work / "normalized"), data, cfg)
            model, blob = load_model(work / "m.pt")
            m, _ = classification_metrics("test", predict(model, blob, x), y, blob["classes"])
            results.append(m["test_accuracy"])
            train_s.append(out.state["history"][-1]["train_s"])
            print(f"seed {seed}: test accuracy {m['test_accuracy']:.4f} ({train_s[-1]:.0f} s of training, "
                  f"{time.perf_counter() - t0:.0f} s in all)", flush=True)
    mean, low = sum(results) / len(results), min(results)
    print(f"{p.train.arch} on {p.prepare.source}: mean test accuracy {mean:.4f}, min {low:.4f} over {len(results)} seeds")
    print(json.dumps({"arch": p.train.arch, "source": p.prepare.source, "seeds": len(results), "set": args.set,
                      "test_accuracy": [round(a, 4) for a in results], "mean": round(mean, 4), "min": round(low, 4),
                      "max_train_s": round(max(train_s), 1)}))


if __name__ == "__main__":
    main()
