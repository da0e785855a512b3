"""normalize: documents -> contiguous train / val / test token ids + a train-only vocabulary.

    python -m pipelines.normalize --workload char_lm --src data/char_lm/prepared --out data/char_lm/normalized
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.config import NormalizeParams
from components.data.parquet import (
    DOCS_SCHEMA,
    TOKEN_ROW_GROUP,
    DataError,
    check_table,
    load_manifest,
    staging_dir,
    write_json,
    write_table,
)
from components.data.text import Vocab, join_documents, split_text, tokens_table
from pipelines.common import main, params, paths


def normalize_char_lm(src: str | Path, out: str | Path, p: NormalizeParams) -> dict:
    """Split the corpus, build the vocabulary from train only, write ids per split."""
    src = Path(src)
    manifest_in = load_manifest(src)
    pf = check_table(src / "docs.parquet", DOCS_SCHEMA, manifest_in["files"]["docs.parquet"])
    text = join_documents(pf.read().column("text").to_pylist())
    splits = split_text(text, p.val_frac, p.test_frac)
    for name, part in splits.items():
        if len(part) < 2:
            raise DataError(f"{src}: the {name} split has {len(part)} characters; the corpus "
                            f"({len(text)} characters) is too short for val_frac={p.val_frac}, test_frac={p.test_frac}")
    vocab = Vocab.build(splits["train"], p.min_count)
    files = {}
    with staging_dir(out) as tmp:
        for name, part in splits.items():
            files[f"{name}.parquet"] = write_table(tmp / f"{name}.parquet", tokens_table(vocab.encode(part)),
                                                   row_group_size=TOKEN_ROW_GROUP)
        write_json(tmp / "vocab.json", vocab.to_json())
        manifest = {"source_sha256": manifest_in["source_sha256"], "vocab_size": len(vocab),
                    "chars": {k: len(v) for k, v in splits.items()}, "files": files,
                    "unknown_in": {k: int((vocab.encode(v) == 0).sum()) for k, v in splits.items() if k != "train"}}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def run(args: argparse.Namespace) -> None:
    m = normalize_char_lm(args.src, args.out, params(args).char_lm.normalize)
    c = m["chars"]
    print(f"[normalize] vocab {m['vocab_size']}, train {c['train']:,} / val {c['val']:,} / test {c['test']:,} chars -> {args.out}")


if __name__ == "__main__":
    main(run, __doc__, paths("--src", "--out"))
