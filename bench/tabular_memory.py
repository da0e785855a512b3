"""A table of any size into the tabular base: peak memory of prepare and normalize at 1x and 3x.

    python bench/tabular_memory.py                    # 200,000 and 600,000 rows x 8 features (CSV)
    python bench/tabular_memory.py --rows 500000 --parquet

Each stage runs in its own process (`components.workloads.tabular.data.prepare` / `normalize`,
what the stages call) with `batch_rows` 16,384, so that 1x is already many batches; its peak
RSS is summed over the process tree and sampled every 50 ms (`tests/rss.py`). Goal: 3x over 1x
at most 1.2 for each stage (memory does not grow with the table). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.conftest import project_env  # noqa: E402
from tests.rss import run_sampled  # noqa: E402

BATCH = 16_384
STAGE = {
    "prepare": "from components.workloads.tabular.data import prepare; "
               "print(prepare({src!r}, 'y', None, 'regression', {batch}, {out!r}))",
    "normalize": "from components.workloads.tabular.data import normalize; "
                 "print(normalize({src!r}, {out!r}, {batch}, 0, 0.1, 0.1, 64))",
}


def write_table(path: Path, rows: int, parquet: bool, seed: int = 0) -> Path:
    """`rows` rows of 8 float features and y, written a block at a time (the bench's own memory stays small)."""
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    w = rng.normal(size=8)
    writer = None
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        x = rng.normal(size=(n, 8))
        t = pa.table({**{f"x{i}": x[:, i] for i in range(8)}, "y": x @ w + rng.normal(scale=0.1, size=n)})
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema) if parquet else pc.CSVWriter(path, t.schema)
        writer.write_table(t)
    writer.close()
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows at 1x (3x is three times as many)")
    ap.add_argument("--parquet", action="store_true", help="the table as Parquet rather than CSV")
    args = ap.parse_args()
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 3):
            work = Path(tmp) / f"x{scale}"
            work.mkdir()
            table = write_table(work / ("t.parquet" if args.parquet else "t.csv"), args.rows * scale, args.parquet)
            src = str(table)
            for stage, dest in (("prepare", "prepared"), ("normalize", "normalized")):
                code = STAGE[stage].format(src=src, out=str(work / dest), batch=BATCH)
                proc, peak = run_sampled([sys.executable, "-c", code], REPO, project_env())
                if proc.returncode:
                    sys.exit(f"{stage} at {scale}x failed: {proc.stderr[-2000:]}")
                out.setdefault(stage, {})[f"{scale}x_mb"] = round(peak / 2**20, 1)
                print(f"[bench] {stage} {scale}x ({args.rows * scale:,} rows, {table.stat().st_size / 2**20:.0f} MB "
                      f"table): peak {peak / 2**20:.0f} MB; {proc.stdout.strip()}", flush=True)
                src = str(work / dest)
    for v in out.values():
        v["rss_3x_over_1x"] = round(v["3x_mb"] / v["1x_mb"], 3)
    print(json.dumps({"rows_1x": args.rows, "format": "parquet" if args.parquet else "csv", "batch_rows": BATCH,
                      "stages": out}))


if __name__ == "__main__":
    main()
