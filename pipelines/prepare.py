"""prepare: raw data -> Parquet, plus a manifest (the workload decides what a row is: a
document for the char-LM, an image with its label and split for the image classifier).

    python -m pipelines.prepare --workload char_lm --out data/char_lm/prepared
"""

from __future__ import annotations

import argparse

from components import timings
from components.cli.entry import main, paths, workload


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    with timings.work():
        summary = w.prepare(p, args.out)
    print(f"[prepare] {summary}")


if __name__ == "__main__":
    main(run, __doc__, paths("--out"))
