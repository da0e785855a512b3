"""Char-LM evaluation: loss in nats/char over whole splits, bits/char, perplexity, samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.parquet import TOKENS_SCHEMA, check_table
from components.workloads.char_lm.data import Vocab
from components.workloads.char_lm.model import CharLM, generate, stream_loss

EVAL_STREAMS = 32  # parallel streams when scoring: state carried within each stream


def score_ids(model: CharLM, ids: torch.Tensor, bptt: int = 128, streams: int = EVAL_STREAMS) -> float:
    """Mean next-character loss (nats/char) over `ids`, read as `streams` contiguous streams
    with the hidden state carried; the few tokens past streams * L are not scored."""
    total, count = stream_loss(model, stream_grid(ids, streams), bptt)
    return total / max(1, count)


def stream_grid(ids: torch.Tensor, streams: int = EVAL_STREAMS) -> torch.Tensor:
    """`ids` cut into `streams` contiguous streams, as columns (L, streams); the few tokens
    past streams * L are dropped."""
    streams = max(1, min(streams, len(ids) // 2))
    length = len(ids) // streams
    return ids[: streams * length].view(streams, length).t().contiguous()


def fit_mixture(lm: CharLM, train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> dict[str, Any]:
    """The count bigram of `train` and the char-LM's weight in the mixture, chosen on `val`
    read as `score_ids` reads it: the `mix` entry of the model file (with both val losses)."""
    from components.workloads.char_lm.baselines import BigramTable
    from components.workloads.char_lm.model import choose_lambda, target_probs

    table = BigramTable.fit(train.numpy(), vocab_size)
    p_lm, prev, nxt = target_probs(lm, stream_grid(val), 128)
    p_bi = table.probs(prev, nxt)
    lam = choose_lambda(p_lm, p_bi)
    return {"bigram": table.state(), "lambda": lam, "lm_val_loss": float(-np.log(p_lm).mean()),
            "val_loss": float(-np.log(lam * p_lm + (1.0 - lam) * p_bi).mean())}


def read_split(folder: str | Path, split: str, manifest: dict[str, Any]) -> torch.Tensor:
    """A checked token split as an int64 tensor."""
    pf = check_table(Path(folder) / f"{split}.parquet", TOKENS_SCHEMA, manifest["files"][f"{split}.parquet"])
    return torch.from_numpy(pf.read().column("id").to_numpy().astype("int64"))


def loss_metrics(prefix: str, loss: float) -> dict[str, float]:
    """nats/char, bits/char and perplexity under one prefix."""
    return {f"{prefix}_loss": loss, f"{prefix}_bits_per_char": loss / math.log(2),
            f"{prefix}_perplexity": math.exp(loss)}


def sample_text(model: CharLM, vocab: Vocab, prompt: str, n_chars: int, temperature: float, seed: int = 0) -> str:
    """The prompt followed by `n_chars` sampled characters (seeded)."""
    g = torch.Generator().manual_seed(seed)
    stoi = vocab.stoi
    ids = generate(model, [stoi.get(c, 0) for c in prompt], n_chars, temperature, generator=g)
    return prompt + vocab.decode(ids)
