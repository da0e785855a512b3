"""normalize: prepared data -> per-split Parquet + statistics from the train split only
(the char-LM's vocabulary, the image classifier's per-channel mean and std).

    python -m pipelines.normalize --workload char_lm --src data/char_lm/prepared --out data/char_lm/normalized
"""

from __future__ import annotations

import argparse

from components import timings
from components.cli.entry import main, paths, workload


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    with timings.work():
        summary = w.normalize(p, args.src, args.out)
    print(f"[normalize] {summary}")


if __name__ == "__main__":
    main(run, __doc__, paths("--src", "--out"))
