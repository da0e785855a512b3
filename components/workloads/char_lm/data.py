"""Char-LM data: documents -> one text -> contiguous splits -> a train-only vocabulary -> ids."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from components.data.parquet import TOKEN_ROW_GROUP, tokens_schema, write_table

UNK = "<unk>"


@dataclass(frozen=True)
class Vocab:
    """Character vocabulary; id 0 is `<unk>` for characters unseen in train."""

    itos: tuple[str, ...]

    @property
    def stoi(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        return token_dtype(len(self.itos))

    def encode(self, text: str) -> np.ndarray:
        """Text -> ids in `dtype`, unknown characters -> 0 (vectorised: code points looked up
        in the sorted characters after `<unk>`)."""
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        known = self._points
        at = np.searchsorted(known, points)
        hit = (at < len(known)) & (known[np.minimum(at, len(known) - 1)] == points) if len(known) else \
            np.zeros(len(points), bool)
        return np.where(hit, at + 1, 0).astype(self.dtype)

    @property
    def _points(self) -> np.ndarray:
        # `build` sorts the characters, so their code points are sorted too (checked: a vocabulary
        # read from an older file might not be, and is then looked up through its sorted order)
        pts = np.array([ord(c) for c in self.itos[1:]], dtype=np.uint32)
        if len(pts) > 1 and not (np.diff(pts.astype(np.int64)) > 0).all():
            raise ValueError("vocabulary characters are not in code point order")
        return pts

    def decode(self, ids) -> str:
        """Ids -> text (`<unk>` shown as U+FFFD)."""
        return "".join("\ufffd" if i == 0 else self.itos[i] for i in (int(x) for x in ids))

    def to_json(self) -> dict:
        return {"itos": list(self.itos), "unk_id": 0}

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        return cls(tuple(obj["itos"]))

    @classmethod
    def build(cls, text: str, min_count: int = 1) -> Vocab:
        """Sorted characters of `text` seen at least `min_count` times, after `<unk>`."""
        return cls.from_counts(Counter(text), min_count)

    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1) -> Vocab:
        """The vocabulary of characters counted at least `min_count` times (counted in a stream)."""
        return cls((UNK, *sorted(c for c, n in counts.items() if n >= min_count)))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint8 for up to 256 symbols, uint16 up to 65,536, else uint32: a token costs what its vocabulary needs."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


def join_documents(texts: list[str]) -> str:
    """One corpus text: documents in order, separated by a blank line."""
    return "\n".join(t if t.endswith("\n") else t + "\n" for t in texts)


def split_text(text: str, val_frac: float, test_frac: float) -> dict[str, str]:
    """Contiguous splits: train first, then val, then test (the last fraction). Never shuffled,
    so no line of val or test text leaks into train."""
    n = len(text)
    n_test = int(n * test_frac)
    n_val = int(n * val_frac)
    n_train = n - n_val - n_test
    return {
        "train": text[:n_train],
        "val": text[n_train:n_train + n_val],
        "test": text[n_train + n_val:],
    }


def token_schema_of(manifest: dict) -> pa.Schema:
    """The schema of a normalized folder's token files (uint16 for folders written before the dtype was recorded)."""
    return tokens_schema(manifest.get("dtype", "uint16"))


def tokens_table(ids: np.ndarray, dtype: np.dtype | str = "uint16") -> pa.Table:
    """Token ids as a one-column table of `dtype`, in corpus order."""
    return pa.Table.from_arrays([pa.array(np.asarray(ids).astype(dtype), type=pa.from_numpy_dtype(np.dtype(dtype)))],
                                schema=tokens_schema(str(np.dtype(dtype))))


def write_token_splits(text: str, folder: Path, val_frac: float, test_frac: float) -> dict[str, Any]:
    """Train and val token files of `text` in `folder`, with the vocabulary of train: what a
    worker loop reads (`vocab_size`, `{split}_uri`, `n_{split}`). For benches and tests; the
    pipeline's own files come from `normalize`."""
    parts = split_text(text, val_frac, test_frac)
    vocab = Vocab.build(parts["train"])
    out: dict[str, Any] = {"vocab_size": len(vocab)}
    for split in ("train", "val"):
        ids = vocab.encode(parts[split])
        write_table(folder / f"{split}.parquet", tokens_table(ids, vocab.dtype), row_group_size=TOKEN_ROW_GROUP)
        out[f"{split}_uri"], out[f"n_{split}"] = str(folder / f"{split}.parquet"), len(ids)
    return out


def steps_per_pass(length: int, bptt: int) -> int:
    """Windows in one pass over streams of `length` tokens at the mean window `bptt`."""
    return max(1, math.ceil((length - 1) / bptt))


def max_windows(tp: dict) -> int | None:
    """The run's cap in windows: `max_tokens` over the tokens of a window (bs x bptt)."""
    return math.ceil(tp["max_tokens"] / (tp["bs"] * tp["bptt"])) if tp.get("max_tokens") else None
