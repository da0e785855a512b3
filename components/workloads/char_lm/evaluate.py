"""Char-LM evaluation: loss in nats/char over whole splits, bits/char, perplexity, samples."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.data.dataset import Split, open_split
from components.data.shards import LazyStreams, TokenFile
from components.store import verified_cache
from components.workloads.char_lm.data import Vocab, token_schema_of
from components.workloads.char_lm.model import CharLM, generate, stream_loss

EVAL_STREAMS = 32  # parallel streams when scoring: state carried within each stream


def score_ids(model: CharLM, ids: torch.Tensor, bptt: int = 128, streams: int = EVAL_STREAMS) -> float:
    """Mean next-character loss (nats/char) over `ids`, read as `streams` contiguous streams
    with the hidden state carried; the few tokens past streams * L are not scored."""
    total, count = stream_loss(model, stream_grid(ids, streams), bptt)
    return total / max(1, count)


def grid_shape(n: int, streams: int = EVAL_STREAMS) -> tuple[int, int]:
    """(streams, length) of `n` tokens laid out for scoring: at most `streams` contiguous streams
    of at least 2 tokens; the few tokens past streams * length are dropped."""
    streams = max(1, min(streams, n // 2))
    return streams, n // streams


def stream_grid(ids: torch.Tensor, streams: int = EVAL_STREAMS) -> torch.Tensor:
    """`ids` cut into contiguous streams (`grid_shape`), as columns (L, streams)."""
    streams, length = grid_shape(len(ids), streams)
    return ids[: streams * length].view(streams, length).t().contiguous()


def fit_mixture(lm: CharLM, train: torch.Tensor | Callable[[int, int], Iterable[np.ndarray]],
                val: torch.Tensor | LazyStreams, vocab_size: int, n_train: int | None = None) -> dict[str, Any]:
    """The count bigram of `train` and the char-LM's weight in the mixture, chosen on `val`
    read as `score_ids` reads it: the `mix` entry of the model file (with both val losses).
    Streamed: `train` may be a chunk reader (`read(start, stop)`, with `n_train`) and `val` the
    split's streams (`split_streams`); memory is a window and the bigram's pairs."""
    from components.workloads.char_lm.baselines import BigramTable
    from components.workloads.char_lm.model import MixtureLoss, window_probs

    if callable(train):
        table = BigramTable.fit_stream(train, n_train, vocab_size)
    else:
        table = BigramTable.fit(train.numpy(), vocab_size)
    grid = stream_grid(val) if isinstance(val, torch.Tensor) else val
    m = MixtureLoss()
    for p_lm, prev, nxt in window_probs(lm, grid, 128):
        m.add(p_lm, table.probs(prev, nxt))
    lam = m.best
    return {"bigram": table.state(), "lambda": lam, "lm_val_loss": -m.lm_sum / max(m.count, 1),
            "val_loss": m.loss(lam)}


def open_tokens(folder: str | Path, split: str, manifest: dict[str, Any]) -> Split:
    """A checked token split (its parts' footers, sizes and rows; sha256 once per file and stat)."""
    return open_split(folder, split, manifest, token_schema_of(manifest), cache=verified_cache())


def split_streams(folder: str | Path, split: str, manifest: dict[str, Any], streams: int = EVAL_STREAMS,
                  mapping: np.ndarray | None = None) -> LazyStreams:
    """A checked split laid out as `stream_grid` lays it out (`grid_shape`), read a window at a time (`mapping`:
    old id -> new id, another vocabulary's numbering)."""
    s = open_tokens(folder, split, manifest)
    streams, length = grid_shape(s.rows, streams)
    return LazyStreams(s.uris, 0, streams, length, mapping=mapping)


def split_reader(folder: str | Path, split: str, manifest: dict[str, Any],
                 chunk: int = 1 << 20) -> Callable[[int, int], Iterator[np.ndarray]]:
    """`read(start, stop)`: a split's ids [start, stop) in chunks (the baselines' way in)."""
    tokens = TokenFile(open_tokens(folder, split, manifest).uris)

    def read(start: int, stop: int) -> Iterator[np.ndarray]:
        for a in range(start, stop, chunk):
            yield tokens.read(a, min(stop, a + chunk)).astype(np.int64)

    return read


def score_split(model: CharLM, folder: str | Path, split: str, manifest: dict[str, Any], bptt: int = 128,
                mapping: np.ndarray | None = None) -> float:
    """`score_ids` of a split, streamed: its windows are read as they are scored."""
    total, count = stream_loss(model, split_streams(folder, split, manifest, mapping=mapping), bptt)
    return total / max(1, count)


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
