"""Stateful character-level language models (the fast.ai lesson 6-7 family).

The hidden state is owned by the caller: it is carried across batches of the same streams
and detached at every bptt window, so gradients flow through one window only while the
model still sees the whole history through the state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from components.data.parquet import atomic_path
from components.workloads.char_lm.data import Vocab

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharLM(nn.Module):
    """Embedding -> RNN/GRU/LSTM -> dropout -> linear, over (seq_len, bs) inputs.

    - `rnn` uses `nonlinearity` tanh or relu; `identity_init` sets the hidden-to-hidden
      weights to the identity (Le, Jaitly & Hinton 2015), which lets a relu RNN carry state.
    - `tie_weights` shares the embedding matrix with the output layer (a projection to
      `n_fac` is added when `n_hidden != n_fac`).
    """

    def __init__(self, vocab_size: int, arch: Literal["lstm", "gru", "rnn"] = "lstm",
                 n_fac: int = 42, n_hidden: int = 256, n_layers: int = 1, dropout: float = 0.0,
                 nonlinearity: Literal["tanh", "relu"] = "tanh", identity_init: bool = False,
                 tie_weights: bool = False):
        super().__init__()
        self.arch, self.n_layers, self.n_hidden = arch, n_layers, n_hidden
        self.emb = nn.Embedding(vocab_size, n_fac)
        # Dropout between layers only exists for n_layers > 1 (PyTorch warns otherwise).
        between = dropout if n_layers > 1 else 0.0
        if arch == "rnn":
            self.rnn = nn.RNN(n_fac, n_hidden, n_layers, nonlinearity=nonlinearity, dropout=between)
        else:
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[arch](n_fac, n_hidden, n_layers, dropout=between)
        if identity_init:
            if arch != "rnn":
                raise ValueError("identity_init applies to arch 'rnn' only")
            with torch.no_grad():
                for layer in range(n_layers):
                    getattr(self.rnn, f"weight_hh_l{layer}").copy_(torch.eye(n_hidden))
                    getattr(self.rnn, f"bias_hh_l{layer}").zero_()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(n_hidden, n_fac, bias=False) if tie_weights and n_hidden != n_fac else None
        self.out = nn.Linear(n_fac if tie_weights else n_hidden, vocab_size)
        if tie_weights:
            self.out.weight = self.emb.weight  # (vocab, n_fac): one matrix, two uses

    def init_hidden(self, bs: int, device: torch.device | str = "cpu") -> Hidden:
        """Zero state for `bs` streams."""
        h = torch.zeros(self.n_layers, bs, self.n_hidden, device=device)
        return (h, torch.zeros_like(h)) if self.arch == "lstm" else h

    def fit_hidden(self, h: Hidden | None, bs: int, device: torch.device | str = "cpu") -> Hidden:
        """`h`, or a fresh state when there is none or the batch size changed."""
        first = h[0] if isinstance(h, tuple) else h
        return self.init_hidden(bs, device) if first is None or first.size(1) != bs else h

    def forward(self, x: torch.Tensor, h: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        h = self.fit_hidden(h, x.size(1), x.device)
        emb = self.emb(x)  # (seq_len, bs, n_fac)
        out, h = self.rnn(emb, h)  # (seq_len, bs, n_hidden)
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)  # (seq_len, bs, n_fac)
        return self.out(out), h  # (seq_len, bs, vocab)


class BigramMixture(nn.Module):
    """`lam` x the char-LM + (1 - lam) x the count bigram of train (the interpolation of a neural
    LM with an n-gram LM that Mikolov's RNNLM papers report): on a small text with thousands
    of characters the bigram is the more sample-efficient half, elsewhere `lam` is near 1.

    `forward` returns log-probabilities, which every caller already treats as logits
    (cross-entropy, softmax with a temperature), so scoring and sampling need no change."""

    def __init__(self, lm: CharLM, bigram: Any, lam: float):
        super().__init__()
        self.lm, self.bigram, self.lam = lm, bigram, float(lam)
        v = bigram.vocab_size
        idx = torch.from_numpy(np.stack([bigram.rows, bigram.cols]))
        vals = torch.from_numpy(bigram.w * bigram.cond).float()
        self.table = torch.sparse_coo_tensor(idx, vals, (v, v), check_invariants=True).coalesce()
        self.floor = torch.from_numpy((1.0 - bigram.w) * bigram.unigram).float()  # the unigram share of every row

    def init_hidden(self, bs: int, device: torch.device | str = "cpu") -> Hidden:
        return self.lm.init_hidden(bs, device)

    def forward(self, x: torch.Tensor, h: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        logits, h = self.lm(x, h)
        p_lm = torch.softmax(logits.float(), -1)
        rows = torch.index_select(self.table, 0, x.flatten().cpu()).to_dense() + self.floor
        p_bi = rows.view(*x.shape, -1).to(p_lm.device)
        return torch.log(self.lam * p_lm + (1.0 - self.lam) * p_bi), h


def choose_lambda(p_lm: np.ndarray, p_bi: np.ndarray, grid: int = 20) -> float:
    """The weight of the char-LM (a multiple of 1/grid) that minimises the mixture's loss on
    these targets' probabilities."""
    m = MixtureLoss(grid)
    m.add(p_lm, p_bi)
    return m.best


class MixtureLoss:
    """The mixture's loss at every weight of the char-LM (multiples of 1/grid), summed as the
    targets' probabilities stream past: the weight is chosen on a whole split, held a window at a time."""

    def __init__(self, grid: int = 20) -> None:
        self.lams = np.linspace(0.0, 1.0, grid + 1)
        self.sums, self.lm_sum, self.count = np.zeros(grid + 1), 0.0, 0

    def add(self, p_lm: np.ndarray, p_bi: np.ndarray) -> None:
        self.sums += np.log(self.lams[:, None] * p_lm + (1.0 - self.lams[:, None]) * p_bi).sum(axis=1)
        self.lm_sum += float(np.log(p_lm).sum())
        self.count += len(p_lm)

    @property
    def best(self) -> float:
        return round(float(self.lams[int(np.argmin(-self.sums / max(self.count, 1)))]), 4)

    def loss(self, lam: float) -> float:
        return float(-self.sums[int(np.argmin(np.abs(self.lams - lam)))] / max(self.count, 1))


def detach_hidden(h: Hidden) -> Hidden:
    """Cut the graph at the window boundary, keeping the values (truncated bptt)."""
    return tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()


def embedding_size(vocab_size: int, floor: int = 42) -> int:
    """fast.ai's embedding-size rule, 1.6 x n^0.56 (at most 600), but never under `floor`: a
    large alphabet (thousands of CJK characters) needs room that 42 dimensions do not give."""
    return max(floor, min(600, round(1.6 * vocab_size ** 0.56)))


def model_kwargs(cfg: dict, vocab_size: int) -> dict:
    """The constructor arguments of `CharLM` from a train config mapping (`n_fac: None` sized
    from the vocabulary by `embedding_size`)."""
    keys = ("arch", "n_fac", "n_hidden", "n_layers", "dropout", "nonlinearity", "identity_init", "tie_weights")
    kw = {"vocab_size": vocab_size, **{k: cfg[k] for k in keys if k in cfg}}
    if kw.get("n_fac", 42) is None:
        kw["n_fac"] = embedding_size(vocab_size)
    return kw


def _windows(streams: torch.Tensor, bptt: int):
    """(inputs, targets) windows of `streams` (L, bs), in order, each at most `bptt` long."""
    for start in range(0, streams.size(0) - 1, bptt):
        seq_len = min(bptt, streams.size(0) - 1 - start)
        yield streams[start:start + seq_len], streams[start + 1:start + 1 + seq_len]


@torch.no_grad()
def stream_loss(model: CharLM, streams: torch.Tensor, bptt: int, device: torch.device | str = "cpu") -> tuple[float, int]:
    """Summed cross-entropy (nats) and count over every next-character target of `streams`
    (L, bs), reading each stream in order with the hidden state carried across windows."""
    model.eval()
    total, count = 0.0, 0
    h = model.init_hidden(streams.size(1), device)
    for x, y in _windows(streams, bptt):
        x, y = x.to(device), y.to(device)
        logits, h = model(x, h)
        total += nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total, count


@torch.no_grad()
def window_probs(model: CharLM, streams: torch.Tensor, bptt: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Window by window, the model's probability of every next-character target of `streams`
    (L, bs), read as `stream_loss` reads them, with each target's previous and next id (flat, CPU)."""
    model.eval()
    h = model.init_hidden(streams.size(1))
    for x, y in _windows(streams, bptt):
        logits, h = model(x, h)
        yield (torch.softmax(logits.float(), -1).gather(-1, y.unsqueeze(-1)).flatten().numpy(),
               x.flatten().numpy(), y.flatten().numpy())


def target_probs(model: CharLM, streams: torch.Tensor, bptt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`window_probs` of every window, concatenated (small inputs; the stages stream)."""
    parts = list(zip(*window_probs(model, streams, bptt), strict=True))
    return tuple(np.concatenate(t) for t in parts)


@torch.no_grad()
def generate(model: CharLM, prompt_ids: list[int], n_chars: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> list[int]:
    """Sample `n_chars` ids after `prompt_ids` with `torch.multinomial` at `temperature`."""
    model.eval()
    device = next(model.parameters()).device
    h = model.init_hidden(1, device)
    ids = list(prompt_ids) or [0]
    logits, h = model(torch.tensor(ids, device=device).view(-1, 1), h)
    out: list[int] = []
    for _ in range(n_chars):
        probs = torch.softmax(logits[-1, 0].float() / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=generator).item())
        out.append(nxt)
        logits, h = model(torch.tensor([[nxt]], device=device), h)
    return out


def publish_model(path: str | Path, state: dict[str, Any], vocab: Vocab, model_config: dict[str, Any],
                  mix: dict[str, Any] | None = None) -> None:
    """Write the self-contained model file (weights, constructor config, vocabulary, and the
    bigram mixture when there is one: `{"bigram": BigramTable.state(), "lambda": ...}`) atomically."""
    # Through a file object: torch.save(obj, path) names the archive's inner folder after the
    # (random) temp file name, so the same model would get different bytes every time.
    blob = {"model": state["model"], "config": model_config, "vocab": list(vocab.itos),
            "train": state.get("train", {}), "history": state.get("history", [])}
    if mix is not None:
        blob["mix"] = mix
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(blob, f)


def load_model(path: str | Path) -> tuple[CharLM | BigramMixture, Vocab, dict[str, Any]]:
    """Load a model file written by `publish_model` (CPU, eval mode): the char-LM, or its
    `BigramMixture` when the file has one."""
    from components.workloads.char_lm.baselines import BigramTable

    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = CharLM(**blob["config"])
    model.load_state_dict(blob["model"])
    if blob.get("mix"):
        model = BigramMixture(model, BigramTable.from_state(blob["mix"]["bigram"]), blob["mix"]["lambda"])
    model.eval()
    return model, Vocab(tuple(blob["vocab"])), blob
