"""Char-LM data: documents -> one text -> contiguous splits -> a train-only vocabulary -> ids."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from components.data.parquet import TOKEN_ROW_GROUP, TOKENS_SCHEMA, write_table

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

    def encode(self, text: str) -> np.ndarray:
        """Text -> uint16 ids, unknown characters -> 0."""
        stoi = self.stoi
        return np.fromiter((stoi.get(c, 0) for c in text), dtype=np.uint16, count=len(text))

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
        counts = Counter(text)
        return cls((UNK, *sorted(c for c, n in counts.items() if n >= min_count)))


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


def tokens_table(ids: np.ndarray) -> pa.Table:
    """uint16 token ids as a one-column table, in corpus order."""
    return pa.Table.from_arrays([pa.array(ids, type=pa.uint16())], schema=TOKENS_SCHEMA)


def write_token_splits(text: str, folder: Path, val_frac: float, test_frac: float) -> dict[str, Any]:
    """Train and val token files of `text` in `folder`, with the vocabulary of train: what a
    worker loop reads (`vocab_size`, `{split}_uri`, `n_{split}`). For benches and tests; the
    pipeline's own files come from `normalize`."""
    parts = split_text(text, val_frac, test_frac)
    vocab = Vocab.build(parts["train"])
    out: dict[str, Any] = {"vocab_size": len(vocab)}
    for split in ("train", "val"):
        ids = vocab.encode(parts[split])
        write_table(folder / f"{split}.parquet", tokens_table(ids), row_group_size=TOKEN_ROW_GROUP)
        out[f"{split}_uri"], out[f"n_{split}"] = str(folder / f"{split}.parquet"), len(ids)
    return out


def steps_per_pass(length: int, bptt: int) -> int:
    """Windows in one pass over streams of `length` tokens at the mean window `bptt`."""
    return max(1, math.ceil((length - 1) / bptt))


def max_windows(tp: dict) -> int | None:
    """The run's cap in windows: `max_tokens` over the tokens of a window (bs x bptt)."""
    return math.ceil(tp["max_tokens"] / (tp["bs"] * tp["bptt"])) if tp.get("max_tokens") else None
