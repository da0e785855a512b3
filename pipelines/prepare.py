"""prepare: the raw corpus -> one Parquet row per document, plus a manifest.

    python -m pipelines.prepare --workload char_lm --out data/char_lm/prepared
"""

from __future__ import annotations

import argparse

import pyarrow as pa

from components.data.parquet import DOCS_SCHEMA, staging_dir, write_json, write_table
from components.data.sources import SourceError, load_source
from pipelines.common import main, params, paths


def prepare_char_lm(source: str, sha256: str | None, out: str) -> dict:
    """Load the corpus and publish `docs.parquet` + `manifest.json` under `out`."""
    docs, source_sha = load_source(source, sha256)
    n_chars = sum(len(d.text) for d in docs)
    if n_chars == 0 or not any(d.text.strip() for d in docs):
        raise SourceError(f"source {source}: the corpus is empty")
    table = pa.Table.from_pylist([{"doc_id": d.doc_id, "text": d.text} for d in docs], schema=DOCS_SCHEMA)
    with staging_dir(out) as tmp:
        entry = write_table(tmp / "docs.parquet", table)
        manifest = {"source": source, "source_sha256": source_sha, "rows": len(docs), "chars": n_chars,
                    "files": {"docs.parquet": entry}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def run(args: argparse.Namespace) -> None:
    p = params(args).char_lm.prepare
    m = prepare_char_lm(p.source, p.sha256, args.out)
    print(f"[prepare] {m['rows']} documents, {m['chars']:,} characters from {p.source} -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--out"))
