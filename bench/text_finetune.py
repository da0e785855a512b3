"""Lesson 10's claim, measured: the text classifier fine-tuned from the char-LM against the
same classifier from random weights, same params and budget, on plays neither has seen.

    dvc repro train@char_lm            # the encoder: models/char_lm/model.pt
    python bench/text_finetune.py --seeds 3

    python bench/text_finetune.py --seeds 3 --max-train-passages 600   # few labels

Seed s draws a different split (`prepare.seed` = s: other plays held out for val and test)
and the same training seed for both models; everything else is params.yaml's
`text_classifier` section (use_tuned is ignored), in this process (one worker, no Ray). Each
model publishes its best epoch by val accuracy, as `dvc repro` does. Prints each seed, the
mean gain with its spread, and a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--encoder-model", default=str(REPO / "models/char_lm/model.pt"),
                    help="the char-LM model file to fine-tune (default: the pipeline's)")
    ap.add_argument("--max-train-passages", type=int, default=None,
                    help="normalize.max_train_passages: fewer labelled passages (the regime ULMFiT is about)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a text_classifier.train key (YAML value), e.g. --set lr=0.003; repeatable")
    args = ap.parse_args()
    if not Path(args.encoder_model).is_file():
        sys.exit(f"{args.encoder_model}: no char-LM model file; run `dvc repro train@char_lm` first "
                 "or pass --encoder-model")

    from components.data.parquet import load_manifest
    from components.training.driver import fit_in_process
    from components.workloads import get
    from components.workloads.text_classifier.evaluate import read_split
    from components.workloads.text_classifier.model import load_model, predict_texts

    w = get("text_classifier")
    p = load_params(args.params).text_classifier
    overrides = {"encoder_model": args.encoder_model}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in type(p.train).model_fields:
            ap.error(f"--set {item!r}: expected KEY=VALUE with KEY a text_classifier train key")
        overrides[key] = yaml.safe_load(value)
    train = type(p.train).model_validate(p.train.model_dump() | overrides)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for seed in range(args.seeds):
            sp = p.model_copy(update={"prepare": p.prepare.model_copy(update={"seed": seed}), "train": train,
                                      "normalize": p.normalize.model_copy(update={"max_train_passages":
                                                                                  args.max_train_passages})})
            folder = work / f"split-{seed}"
            w.prepare(sp, str(folder / "prepared"))
            w.normalize(sp, str(folder / "prepared"), str(folder / "normalized"))
            data = w.training_data(str(folder / "normalized"), train.model_dump(), sp).workers
            texts, y = read_split(folder / "normalized", "test", load_manifest(folder / "normalized"))
            row: dict[str, float | int] = {"seed": seed}
            for encoder in ("char_lm", "scratch"):
                cfg = train.model_dump() | {"seed": seed, "encoder": encoder}
                t0 = time.perf_counter()
                out = fit_in_process(w.worker_loop(), {"train": cfg, "data": data},
                                     run_uri=str(folder / f"run-{encoder}"), cpus_per_worker=cfg["cpus_per_worker"],
                                     use_gpu=False, select=w.select)
                w.publish(folder / f"{encoder}.pt", out.published, str(folder / "normalized"), data, cfg)
                model, blob = load_model(folder / f"{encoder}.pt")
                row[encoder] = float((predict_texts(model, blob, texts).argmax(1) == y).float().mean())
                row[f"{encoder}_s"] = round(time.perf_counter() - t0, 1)
            row["majority"] = float((y == int(y.bincount().argmax())).float().mean())  # of test: an upper bound
            rows.append(row)
            print(f"seed {seed}: test accuracy fine-tuned {row['char_lm']:.4f}, scratch {row['scratch']:.4f} "
                  f"(gain {row['char_lm'] - row['scratch']:+.4f}); test's own majority class {row['majority']:.4f}",
                  flush=True)
    gains = [r["char_lm"] - r["scratch"] for r in rows]
    mean = statistics.mean(gains)
    sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"fine-tuned - scratch, test accuracy on unseen plays: mean {mean:+.4f} (sd {sd:.4f}), "
          f"{sum(g > 0 for g in gains)} of {len(gains)} seeds positive")
    print(json.dumps({"seeds": len(rows), "set": args.set, "max_train_passages": args.max_train_passages, "rows": rows, "mean_gain": round(mean, 4),
                      "sd_gain": round(sd, 4), "fine_tuned_mean": round(statistics.mean(r["char_lm"] for r in rows), 4),
                      "scratch_mean": round(statistics.mean(r["scratch"] for r in rows), 4)}))


if __name__ == "__main__":
    main()
