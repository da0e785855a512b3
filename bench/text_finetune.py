"""Lesson 10's claim, measured: ULMFiT's three steps against what each step adds.

    dvc repro train@char_lm            # the general LM: models/char_lm/model.pt
    python bench/text_finetune.py --seeds 3

For each seed s (`prepare.seed` = s: other books held out for val and test, by division) and
params.yaml's `text_classifier` section (use_tuned is ignored), in this process (one worker,
no Ray), with the same params, budget and training seed for every classifier:

    fine-tuned  the classifier on the general LM fine-tuned on the train books (adapt)
    general     the classifier on the general LM, without the fine-tuning step
    scratch     the classifier from random weights
    tfidf       word TF-IDF + logistic regression; majority: the majority class of train

each with all the train passages and with `--few` of them (1,000: the few-label regime
ULMFiT is about; the LM fine-tuning still reads all the train books, which are unlabelled
text to it). Val and test accuracy per model and seed; settings are chosen on val, never on
test. Prints a row per seed and regime, then a JSON line last: the gains over scratch and over
the general LM per split, their means, and the few-label means.
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

MODELS = ("fine_tuned", "general", "scratch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--general-lm", default=str(REPO / "models/char_lm/model.pt"),
                    help="the general char-LM model file (default: the pipeline's)")
    ap.add_argument("--few", type=int, default=1000, help="labelled train passages in the few-label regime (0: skip)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a text_classifier key (YAML value), e.g. --set train.lr=0.003; repeatable")
    args = ap.parse_args()
    if not Path(args.general_lm).is_file():
        sys.exit(f"{args.general_lm}: no char-LM model file; run `dvc repro train@char_lm` first or pass --general-lm")

    from components.data.parquet import load_manifest
    from components.training.driver import fit_in_process
    from components.workloads import get
    from components.workloads.text_classifier.evaluate import read_split, tfidf_baseline
    from components.workloads.text_classifier.model import load_model, predict_texts

    w = get("text_classifier")
    raw = load_params(args.params).text_classifier.model_dump(by_alias=True)
    for item in args.set:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or section not in raw or name not in raw[section]:
            ap.error(f"--set {item!r}: expected SECTION.KEY=VALUE naming a text_classifier key")
        raw[section][name] = yaml.safe_load(value)
    p = type(load_params(args.params).text_classifier).model_validate(raw)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.seeds):
            for few in ([None, args.few] if args.few else [None]):
                folder = Path(work) / f"split-{seed}-{few or 'all'}"
                sp = p.model_copy(update={
                    "prepare": p.prepare.model_copy(update={"seed": seed}),
                    "normalize": p.normalize.model_copy(update={"max_train_passages": few}),
                    "adapt": p.adapt.model_copy(update={"base_model": args.general_lm, "seed": seed})})
                w.prepare(sp, str(folder / "prepared"))
                if few is None:
                    w.normalize(sp, str(folder / "prepared"), str(folder / "normalized"))
                    print(f"[bench] seed {seed}: {w.adapt(sp, str(folder / 'normalized'), str(folder / 'lm.pt'))}",
                          flush=True)
                    adapted = folder / "lm.pt"
                else:  # the LM read every train book already: only the labels are fewer
                    w.normalize(sp, str(folder / "prepared"), str(folder / "normalized"))
                    adapted = Path(work) / f"split-{seed}-all" / "lm.pt"
                norm = folder / "normalized"
                manifest = load_manifest(norm)
                splits = {s: read_split(norm, s, manifest) for s in ("train", "val", "test")}
                row: dict = {"seed": seed, "labelled": manifest["files"]["train"]["rows"]}
                encoders = {"fine_tuned": ("char_lm", adapted), "general": ("char_lm", args.general_lm),
                            "scratch": ("scratch", args.general_lm)}
                for name, (encoder, lm) in encoders.items():
                    cfg = sp.train.model_dump() | {"seed": seed, "encoder": encoder, "encoder_model": str(lm)}
                    data = w.training_data(str(norm), cfg, sp).workers
                    t0 = time.perf_counter()
                    out = fit_in_process(w.worker_loop(), {"train": cfg, "data": data}, run_uri=str(folder / f"run-{name}"),
                                         cpus_per_worker=cfg["cpus_per_worker"], use_gpu=False, select=w.select)
                    w.publish(folder / f"{name}.pt", out.published, str(norm), data, cfg)
                    model, blob = load_model(folder / f"{name}.pt")
                    for s in ("val", "test"):
                        texts, y = splits[s]
                        row[f"{name}_{s}"] = float((predict_texts(model, blob, texts).argmax(1) == y).float().mean())
                    row[f"{name}_s"] = round(time.perf_counter() - t0, 1)
                tf = tfidf_baseline(splits["train"], {s: splits[s] for s in ("val", "test")}, seed)
                row |= {"tfidf_val": tf["tfidf_val_accuracy"], "tfidf_test": tf["tfidf_test_accuracy"]}
                majority = int(splits["train"][1].bincount().argmax())
                row |= {f"majority_{s}": float((splits[s][1] == majority).float().mean()) for s in ("val", "test")}
                rows.append(row)
                print(f"[bench] seed {seed}, {row['labelled']} labelled: test " + ", ".join(
                    f"{k} {row[f'{k}_test']:.4f}" for k in (*MODELS, "tfidf", "majority")) + "; val " + ", ".join(
                    f"{k} {row[f'{k}_val']:.4f}" for k in (*MODELS, "tfidf", "majority")), flush=True)

    def gains(regime_rows: list[dict], other: str) -> list[float]:
        return [round(r["fine_tuned_test"] - r[f"{other}_test"], 4) for r in regime_rows]

    full = [r for r in rows if r["labelled"] > args.few] if args.few else rows
    few_rows = [r for r in rows if r not in full]
    out = {"seeds": args.seeds, "set": args.set, "rows": rows,
           "gain_over_scratch": gains(full, "scratch"), "gain_over_general": gains(full, "general"),
           "mean_gain_over_scratch": round(statistics.mean(gains(full, "scratch")), 4),
           "mean_gain_over_general": round(statistics.mean(gains(full, "general")), 4),
           "mean_test": {k: round(statistics.mean(r[f"{k}_test"] for r in full), 4)
                         for k in (*MODELS, "tfidf", "majority")}}
    if few_rows:
        out |= {"few_labelled": args.few,
                "few_mean_gain_over_scratch": round(statistics.mean(gains(few_rows, "scratch")), 4),
                "few_mean_gain_over_general": round(statistics.mean(gains(few_rows, "general")), 4),
                "few_mean_test": {k: round(statistics.mean(r[f"{k}_test"] for r in few_rows), 4)
                                  for k in (*MODELS, "tfidf", "majority")}}
    print(f"[bench] fine-tuned - scratch, test accuracy on unseen books: mean {out['mean_gain_over_scratch']:+.4f}; "
          f"fine-tuned - general LM: {out['mean_gain_over_general']:+.4f}"
          + (f"; with {args.few} labels: {out['few_mean_gain_over_scratch']:+.4f} / "
             f"{out['few_mean_gain_over_general']:+.4f}" if few_rows else ""))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
