"""adapt: a model the workload starts from, fitted to its train data first (an optional stage,
for workloads that list it in `extra_stages`). The text classifier's is ULMFiT's second step:
the general char-LM fine-tuned as a language model on the train books only.

    python -m pipelines.adapt --workload text_classifier --data data/text_classifier/normalized \
        --out models/text_classifier/lm.pt
"""

from __future__ import annotations

import argparse

from components import timings
from components.cli.entry import main, paths, workload


def run(args: argparse.Namespace) -> None:
    w, p = workload(args)
    with timings.work():
        summary = w.adapt(p, args.data, args.out)
    print(f"[adapt] {summary}")


if __name__ == "__main__":
    main(run, __doc__, paths("--data", "--out"))
