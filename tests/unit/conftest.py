"""Fixtures of the unit tier."""

from __future__ import annotations

import numpy as np
import pytest

from components.data.parquet import TOKEN_ROW_GROUP, write_table
from components.workloads.char_lm.data import tokens_table


@pytest.fixture
def tiny_tokens(tmp_path):
    """Random token streams (train 6,000, val 1,500 of a 12-symbol vocabulary) in Parquet."""
    rng = np.random.default_rng(0)
    out = {"vocab_size": 12}
    for split, n in (("train", 6000), ("val", 1500)):
        ids = rng.integers(0, 12, n)
        write_table(tmp_path / f"{split}.parquet", tokens_table(ids), row_group_size=TOKEN_ROW_GROUP)
        out[f"{split}_uri"], out[f"n_{split}"] = str(tmp_path / f"{split}.parquet"), n
    return out


def write_tiny_text(folder):
    """Two-class passages (class 0 writes a-d, class 1 e-h: learnt in a few steps), train 64 and
    val 16, and a tiny char-LM to fine-tune, written under `folder`; returns (the text
    classifier loop's data config, the char-LM)."""
    import pyarrow as pa
    import torch

    from components.workloads.char_lm.model import CharLM

    itos = ["<unk>", *"abcdefgh \n"]
    lm = CharLM(len(itos), n_fac=8, n_hidden=16)
    torch.save({"model": lm.state_dict(), "vocab": itos}, folder / "lm.pt")
    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("val", 16)):
        labels = torch.randint(0, 2, (n,), generator=rng).tolist()
        texts = ["".join(itos[1 + 4 * lab + int(i)] for i in torch.randint(0, 4, (40,), generator=rng)) for lab in labels]
        write_table(folder / f"{split}.parquet", pa.table({"text": texts, "label": pa.array(labels, pa.int16())}))
    data = {"train_uri": str(folder / "train.parquet"), "val_uri": str(folder / "val.parquet"), "n_train": 64,
            "n_val": 16, "n_classes": 2, "encoder_uri": str(folder / "lm.pt"),
            "encoder": {"vocab": itos, "vocab_size": len(itos), "arch": "lstm", "n_fac": 8, "n_hidden": 16,
                        "n_layers": 1}}
    return data, lm
