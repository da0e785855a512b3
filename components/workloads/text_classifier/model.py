"""The lesson-10 classifier: the char-LM's embedding and recurrent layers as its encoder, a
concat-pooling head on top, and ULMFiT's fine-tuning schedule (Howard & Ruder 2018):
discriminative learning rates, a slanted triangular schedule and gradual unfreezing."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from components.training.schedules import slanted_triangular

HEAD = "concat_pool"  # ours; anything else names a factory by import path


class PoolingClassifier(nn.Module):
    """Embedding -> RNN/GRU/LSTM over a passage (seq_len, bs), then [last hidden state, max
    pool, mean pool] over time (3 x n_hidden) -> batch norm -> dropout -> linear -> ReLU ->
    batch norm -> dropout -> linear to the classes: ULMFiT's concat pooling head."""

    def __init__(self, vocab_size: int, n_classes: int, arch: Literal["lstm", "gru", "rnn"] = "lstm",
                 n_fac: int = 42, n_hidden: int = 256, n_layers: int = 1, nonlinearity: str = "tanh",
                 dropout: float = 0.3, head_hidden: int = 50, head: str = HEAD) -> None:
        super().__init__()
        # the char-LM's encoder modules under its parameter names (`emb.*`, `rnn.*`): the model
        # file's state dict is the interface, so its weights load as they are (no import of the
        # char-LM's code: its edits do not rerun this workload's stages unless they change that)
        self.emb, self.n_layers = nn.Embedding(vocab_size, n_fac), n_layers
        self.rnn = (nn.RNN(n_fac, n_hidden, n_layers, nonlinearity=nonlinearity) if arch == "rnn"
                    else {"lstm": nn.LSTM, "gru": nn.GRU}[arch](n_fac, n_hidden, n_layers))
        if head != HEAD:  # the user's own, by import path: (N, 3 x n_hidden) pooled states to logits
            from components.workloads.modules import build_head

            self.head = build_head(head, "text_classifier.train.head", 3 * n_hidden, n_classes, dropout)
        else:
            self.head = nn.Sequential(
                nn.BatchNorm1d(3 * n_hidden), nn.Dropout(dropout), nn.Linear(3 * n_hidden, head_hidden), nn.ReLU(),
                nn.BatchNorm1d(head_hidden), nn.Dropout(dropout), nn.Linear(head_hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))  # (seq_len, bs, n_hidden)
        pooled = torch.cat([out[-1], out.max(dim=0).values, out.mean(dim=0)], dim=1)
        return self.head(pooled)  # (bs, n_classes)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from the input up: the embedding, each recurrent layer, the head. What
        discriminative rates and gradual unfreezing count in."""
        layers: list[list[nn.Parameter]] = [[] for _ in range(self.n_layers)]
        for name, p in self.rnn.named_parameters():
            layers[int(name.rsplit("_l", 1)[1].split("_")[0])].append(p)
        return [list(self.emb.parameters()), *layers, list(self.head.parameters())]


def load_encoder(model: PoolingClassifier, lm_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the char-LM's embedding and recurrent weights into `model`; the names copied. A
    char-LM of another shape fails here, naming the first mismatch."""
    own = model.state_dict()
    copied = []
    for name, t in lm_state.items():
        if not name.startswith(("emb.", "rnn.")):
            continue  # the LM's output layer (and projection) has no counterpart
        if name not in own or own[name].shape != t.shape:
            raise ValueError(f"the char-LM's {name} {tuple(t.shape)} does not fit the classifier's encoder "
                             f"{tuple(own[name].shape) if name in own else '(absent)'}: arch, n_fac, n_hidden and "
                             "n_layers must be the char-LM's")
        own[name] = t
        copied.append(name)
    model.load_state_dict(own)
    return copied


def discriminative_groups(model: PoolingClassifier, lr: float, factor: float = 2.6) -> list[dict[str, Any]]:
    """Optimizer param groups, one per layer group: the head at `lr`, each group below it at the
    rate of the one above / `factor` (ULMFiT's 2.6). Each group records its own `base_lr`."""
    groups = model.layer_groups()
    depth = len(groups) - 1
    return [{"params": ps, "lr": lr / factor ** (depth - i), "base_lr": lr / factor ** (depth - i)}
            for i, ps in enumerate(groups)]


def unfrozen_from(epoch: int, n_groups: int, every: int = 1) -> int:
    """Gradual unfreezing: the index of the lowest layer group that trains in `epoch` (0-based).
    The head alone first, one more group from the top every `every` epochs, all at the end."""
    return max(0, n_groups - 1 - epoch // max(1, every))


def apply_schedule(opt: torch.optim.Optimizer, step: int, total: int, epoch: int, every: int,
                   cut_frac: float = 0.1, ratio: float = 32.0) -> None:
    """Set each group's rate for this step: its base rate x STLR, or 0 while it is frozen. A
    frozen group keeps requires_grad (DDP's reducer is built once); a zero rate (and no weight
    decay at lr 0 in AdamW) leaves it where it is."""
    low = unfrozen_from(epoch, len(opt.param_groups), every)
    mult = slanted_triangular(step, total, cut_frac, ratio)
    for i, g in enumerate(opt.param_groups):
        g["lr"] = g["base_lr"] * mult if i >= low else 0.0


def publish_model(path, state: dict[str, Any], data: dict[str, Any], train: dict[str, Any]) -> None:
    """Write the self-contained model file: weights, the encoder's shape and vocabulary, the
    classes, the run's params and history, and which char-LM file the encoder came from."""
    from components.data.parquet import atomic_path, file_md5

    blob = {"model": state["model"], "encoder": data["encoder"], "classes": data["classes"],
            "config": {"arch": f"{data['encoder']['arch']}-classifier"},
            "head": {"dropout": train["dropout"], "head_hidden": train["head_hidden"], "spec": train.get("head", HEAD)},
            "train": state.get("train", train), "history": state.get("history", []),
            "fine_tuned_from": ({"file": train["encoder_model"], "md5": file_md5(train["encoder_model"]),
                                 "base": data["encoder"].get("fine_tuned_from")}  # the general LM, when adapted
                                if train["encoder"] != "scratch" else None)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(blob, f)


def build_from(blob: dict[str, Any]) -> PoolingClassifier:
    """An untrained classifier of the shape a model file (or a data dict) describes."""
    enc = blob["encoder"]
    return PoolingClassifier(enc["vocab_size"], len(blob["classes"]), arch=enc["arch"], n_fac=enc["n_fac"],
                             n_hidden=enc["n_hidden"], n_layers=enc["n_layers"],
                             nonlinearity=enc.get("nonlinearity", "tanh"), dropout=blob["head"]["dropout"],
                             head_hidden=blob["head"]["head_hidden"], head=blob["head"].get("spec", HEAD))


def load_model(path) -> tuple[PoolingClassifier, dict[str, Any]]:
    """A model file written by `publish_model`, on the CPU in eval mode, and its blob."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = build_from(blob)
    model.load_state_dict(blob["model"])
    model.eval()
    return model, blob


@torch.no_grad()
def predict_texts(model: PoolingClassifier, blob: dict[str, Any], texts: list[str], bs: int = 256) -> torch.Tensor:
    """Class probabilities (N, n_classes) for passages of any length (equal lengths batched)."""
    stoi = {c: i for i, c in enumerate(blob["encoder"]["vocab"])}
    model.eval()
    out = torch.empty(len(texts), len(blob["classes"]))
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(texts):
        if not t:
            raise ValueError(f"passage {i} is empty")
        by_len.setdefault(len(t), []).append(i)
    for _, idx in sorted(by_len.items()):
        for k in range(0, len(idx), bs):
            chunk = idx[k:k + bs]
            x = torch.tensor([[stoi.get(c, 0) for c in texts[i]] for i in chunk], dtype=torch.long).T
            out[chunk] = torch.softmax(model(x), dim=1)
    return out
