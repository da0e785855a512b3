"""Labelled text as most of it comes: a table (CSV, Parquet, JSON Lines) with a text and a label
column, through prepare and normalize; and a table that is not what it should be, named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

WORDS = {"sport": "ball goal team match score win coach", "food": "bread soup salt cook bake meal taste",
         "tech": "chip code data byte disk cloud model"}


def _rows(n: int = 90) -> list[dict]:
    import random

    rng = random.Random(0)
    out = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        out.append({"body": " ".join(rng.choice(WORDS[label].split()) for _ in range(rng.randint(8, 60))),
                    "topic": label, "id": i})
    return out


def _write(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=17)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def _stage(cwd: Path, stage: str, prepare: dict, *args: str) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump({"text_classifier": {"prepare": prepare}}))
    env = {**os.environ, "TRAINYARD_STORE": str(cwd / "store")}
    return subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--workload", "text_classifier", "--params",
                           "params.yaml", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_table_of_labelled_text_goes_through_prepare_and_normalize(tmp_path, suffix):
    table = tmp_path / f"reviews{suffix}"
    rows = _rows()
    _write(table, rows)
    prepare = {"source": str(table), "inputs": str(tmp_path), "text_column": "body", "label_column": "topic",
               "passage_chars": 64, "val_frac": 0.2, "test_frac": 0.2}
    p = _stage(tmp_path, "prepare", prepare, "--out", "prepared")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "prepared/manifest.json").read_text())
    assert m["documents"] == 90 and json.loads((tmp_path / "prepared/classes.json").read_text())["classes"] == \
        ["food", "sport", "tech"]
    assert m["short_documents_filled"] > 0  # texts under 64 characters are repeated to fill a passage
    t = pq.read_table(tmp_path / "prepared/passages")
    assert set(len(x) for x in t.column("text").to_pylist()) == {64}
    by_doc: dict[str, set] = {}
    for doc, split in zip(t.column("document").to_pylist(), t.column("split").to_pylist(), strict=True):
        by_doc.setdefault(doc, set()).add(split)
    assert len(by_doc) == 90 and all(len(s) == 1 for s in by_doc.values())  # split by row (document)
    p = _stage(tmp_path, "normalize", prepare, "--src", "prepared", "--out", "normalized")
    assert p.returncode == 0, p.stderr
    n = json.loads((tmp_path / "normalized/manifest.json").read_text())
    assert sum(f["rows"] for f in n["files"].values()) == t.num_rows


def test_the_shuffle_in_buckets_keeps_every_passage_in_a_seeded_order(tmp_path, monkeypatch):
    from components.workloads.text_classifier.params import TextPrepareParams
    from components.workloads.text_classifier.staging import prepare_texts

    table = tmp_path / "t.jsonl"
    _write(table, _rows(300))
    monkeypatch.setenv("TRAINYARD_STORE", str(tmp_path / "store"))
    base = {"source": str(table), "text_column": "body", "label_column": "topic", "passage_chars": 32}
    one = prepare_texts(TextPrepareParams(**base), tmp_path / "one")
    many = TextPrepareParams(**base).model_copy(update={"shuffle_mb": 1})
    import components.workloads.text_classifier.staging as st

    monkeypatch.setattr(st, "load_documents", lambda *a: _smaller(st, a))  # a source "larger" than 1 MB: 4 buckets
    two = prepare_texts(many, tmp_path / "two")
    a, b = (pq.read_table(tmp_path / d / "passages").to_pylist() for d in ("one", "two"))
    key = lambda r: (r["document"], r["text"])  # noqa: E731
    assert one["rows"] == two["rows"] and sorted(a, key=key) == sorted(b, key=key) and a != b
    assert prepare_texts(many, tmp_path / "three")["files"] == two["files"]  # the same bytes again


def _smaller(st, args):
    from components.workloads.text_classifier.data import load_documents

    src = load_documents(*args)
    src.size = 4 * 2**20
    return src


@pytest.mark.parametrize("content, message", [
    ([{"body": "a b c", "topic": "x"}, {"body": "d e f", "topic": "x"}], "every row is labelled 'x'"),
    ([{"text": "a b c", "topic": "x"}], "no column 'body'"),
])
def test_a_table_that_cannot_train_a_classifier_is_one_line(tmp_path, content, message):
    table = tmp_path / "t.csv"
    _write(table, content)
    p = _stage(tmp_path, "prepare", {"source": str(table), "inputs": str(tmp_path), "text_column": "body",
                                     "label_column": "topic"}, "--out", "prepared")
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1 and last.startswith("error: ") and message in last and str(table) in last, p.stderr
    assert not (tmp_path / "prepared").exists()


def test_a_row_that_is_not_utf8_is_named(tmp_path):
    table = tmp_path / "t.csv"
    rows = _rows(30)
    _write(table, rows)
    data = table.read_bytes().splitlines(keepends=True)
    data[8] = data[8].replace(b"ball", b"b\xffll", 1).replace(b"bread", b"br\xffad", 1).replace(b"chip", b"ch\xffp", 1)
    table.write_bytes(b"".join(data))
    p = _stage(tmp_path, "prepare", {"source": str(table), "inputs": str(tmp_path), "text_column": "body",
                                     "label_column": "topic"}, "--out", "prepared")
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1 and "row 8: column 'body' is not UTF-8 text" in last, p.stderr
    assert not (tmp_path / "prepared").exists()


def test_a_bucket_larger_than_the_budget_is_split_again_never_held_whole(tmp_path, monkeypatch):
    """The source's size guessed too few buckets (short texts, each repeated to a passage): the
    bucket is dealt into sub-buckets a row group at a time; what is held at once stays near the
    budget, and every row comes out once, in a seeded order."""
    import numpy as np

    from components.workloads.text_classifier.data import PASSAGES_SCHEMA
    from components.workloads.text_classifier.staging import _Rows, shuffle_bucket

    bucket = tmp_path / "0.parquet"
    rows = _Rows(bucket, PASSAGES_SCHEMA)
    for i in range(6000):
        rows.add(text=f"{i:06d}" * 40, label=i % 3, document=f"row {i}", split="train")
    rows.close()
    held: list[int] = []
    real = _Rows.write

    def spy(self, table):
        held.append(table.nbytes)
        return real(self, table)

    def run(name: str) -> list[str]:
        held.clear()
        out = _Rows(tmp_path / name, PASSAGES_SCHEMA, 1 << 30)
        shuffle_bucket(bucket if name == "a" else copy, out, np.random.default_rng(0), np.random.default_rng(1),
                       budget=300_000)
        out.close()
        return pq.read_table(tmp_path / name).column("document").to_pylist()

    import shutil

    copy = tmp_path / "copy.parquet"
    shutil.copy(bucket, copy)
    monkeypatch.setattr(_Rows, "write", spy)
    a = run("a")
    assert sorted(a) == sorted(f"row {i}" for i in range(6000)) and a != sorted(a)
    assert max(held) < 2 * 300_000 and not bucket.exists()  # the whole bucket is about 1.5 MB
    assert run("b") == a  # seeded: the same order again
