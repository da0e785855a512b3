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
