"""trial_params: the train params a sweep trial uses (all but the keys only the final run
reads: epochs, steps_per_epoch, num_workers, seed, ...; and but the keys in `tune.space`,
which every trial samples), as JSON.

    python -m pipelines.trial_params --workload char_lm --out tune/char_lm/trial_params.json

`tune` depends on this file instead of on all of `<workload>.train`: DVC reruns this stage
(a second) when any train key changes, and `tune` only when the file does.
"""

from __future__ import annotations

import argparse

from components.cli.entry import main, paths, workload
from components.config import trial_params
from components.data.parquet import write_json


def run(args: argparse.Namespace) -> None:
    _, p = workload(args)
    base = trial_params(p.train, p.tune.space)
    write_json(args.out, {"train": base})
    print(f"[trial_params] {len(base)} train keys reach a trial -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--out"))
