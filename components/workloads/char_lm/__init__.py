"""The char-LM workload: a stateful char-level RNN / GRU / LSTM trained with truncated bptt.

    params.py   its params.yaml section        staging.py  prepare / normalize / what workers read
    data.py     vocabulary, splits, token ids  model.py    CharLM, its model file
    loop.py     the Ray Train worker loop      evaluate.py loss, bits/char, samples
    pyfunc.py   the registered MLflow model    lr_find.py  the lr finder
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.workloads.base import Registration, TrainingData, Workload
from components.workloads.char_lm.params import CharLMParams


class CharLM(Workload):
    name = "char_lm"
    params = CharLMParams
    data_meta = "vocab.json"
    live_metrics = ("epoch", "train_loss", "val_loss", "lr", "tokens_per_s")
    headline = ("bptt", "lr", "dropout", "weight_decay")
    stage_modules = {"prepare": ("staging",), "normalize": ("staging",),
                     "tune": ("staging", "data", "loop"), "train": ("staging", "loop", "data", "evaluate", "model"),
                     "evaluate": ("evaluate", "baselines", "model"), "register": ("pyfunc", "model", "evaluate", "data")}

    def budget(self, cfg: dict[str, Any]) -> str:
        """The shared budget line, with the run's token cap (`max_tokens`)."""
        line = super().budget(cfg)
        if not cfg.get("max_tokens"):
            return line
        head, sep, patience = line.partition(", patience")
        return f"{head}, at most {cfg['max_tokens']:,} tokens{sep}{patience}"

    def prepare(self, p: CharLMParams, out: str) -> str:
        from components.workloads.char_lm.staging import prepare_corpus

        m = prepare_corpus(p.prepare.source, p.prepare.sha256, out)
        return f"{m['documents']} documents, {m['chars']:,} characters from {p.prepare.source} -> {out}"

    def normalize(self, p: CharLMParams, src: str, out: str) -> str:
        from components.workloads.char_lm.staging import normalize_corpus

        m = normalize_corpus(src, out, p.normalize)
        c = m["chars"]
        return f"vocab {m['vocab_size']}, train {c['train']:,} / val {c['val']:,} / test {c['test']:,} chars -> {out}"

    def training_data(self, folder: str, train: dict[str, Any], p: CharLMParams) -> TrainingData:
        from components.workloads.char_lm.staging import training_data

        data = training_data(folder)
        return TrainingData(data, {"vocab_size": data["vocab_size"], "n_train_tokens": data["n_train"]})

    def steps_per_pass(self, data: dict[str, Any], train: dict[str, Any]) -> int:
        from components.workloads.char_lm.data import steps_per_pass

        return steps_per_pass(data["n_train"] // train["bs"], train["bptt"])

    def worker_loop(self) -> Callable[[dict[str, Any]], None]:
        from components.workloads.char_lm.loop import train_loop_per_worker

        return train_loop_per_worker

    def publish(self, path: str | Path, state: dict[str, Any], folder: str, data: dict[str, Any],
                train: dict[str, Any]) -> None:
        from components.data.parquet import load_manifest, read_json
        from components.workloads.char_lm.data import Vocab
        from components.workloads.char_lm.evaluate import fit_mixture, split_reader, split_streams
        from components.workloads.char_lm.model import CharLM as Net
        from components.workloads.char_lm.model import model_kwargs, publish_model

        vocab = Vocab.from_json(read_json(Path(folder) / "vocab.json"))
        kwargs, mix = model_kwargs(train, data["vocab_size"]), None
        if train["bigram_mix"]:
            lm = Net(**kwargs)
            lm.load_state_dict(state["model"])
            manifest = load_manifest(folder)
            mix = fit_mixture(lm, split_reader(folder, "train", manifest), split_streams(folder, "val", manifest),
                              data["vocab_size"], manifest["files"]["train"]["rows"])
            print(f"[train] mixed with the count bigram of train: char-LM weight {mix['lambda']:.2f} (chosen on "
                  f"val), val_loss {mix['lm_val_loss']:.4f} -> {mix['val_loss']:.4f}", flush=True)
        publish_model(path, state, vocab, kwargs, mix)

    def evaluate(self, p: CharLMParams, data: str, model: str, reports: Path,
                 state: Path) -> tuple[dict[str, Any], list[str]]:
        from components.data.parquet import load_manifest
        from components.workloads.char_lm.baselines import baselines
        from components.workloads.char_lm.evaluate import (
            loss_metrics,
            sample_text,
            score_split,
            split_reader,
        )
        from components.workloads.char_lm.model import BigramMixture, load_model

        e = p.evaluate
        net, vocab, _ = load_model(model)
        manifest = load_manifest(data)
        t0 = time.perf_counter()
        metrics: dict[str, Any] = {}
        for split in ("val", "test"):  # streamed: a window of every stream at a time
            metrics |= loss_metrics(split, score_split(net, data, split, manifest))
            if isinstance(net, BigramMixture):  # a bigram mixture: the char-LM alone too, for comparison
                metrics[f"lm_only_{split}_loss"] = score_split(net.lm, data, split, manifest)
        if isinstance(net, BigramMixture):
            metrics["bigram_mix_lambda"] = net.lam
        metrics["eval_s"] = time.perf_counter() - t0
        # the floor a model must beat, from the same splits (register will not crown one that does not),
        # counted and scored a chunk at a time
        rows = {s: manifest["files"][s]["rows"] for s in ("train", "val", "test")}
        readers = {s: split_reader(data, s, manifest) for s in ("train", "val", "test")}
        metrics |= baselines(readers["train"], {s: (lambda s=s: readers[s](0, rows[s])) for s in ("val", "test")},
                             len(vocab), rows["train"])
        samples = {t: sample_text(net, vocab, e.prompt, e.n_chars, t, e.seed) for t in sorted({e.temperature, 1.0})}
        (reports / "samples.txt").write_text("".join(f"--- temperature {t} ---\n{s}\n\n" for t, s in samples.items()))
        return metrics, [f"val_loss {metrics['val_loss']:.4f} ({metrics['val_bits_per_char']:.3f} bits/char, "
                         f"perplexity {metrics['val_perplexity']:.2f}), test_loss {metrics['test_loss']:.4f}",
                         f"baselines on val: bigram {metrics['baseline_bigram_val_loss']:.4f}, unigram "
                         f"{metrics['baseline_unigram_val_loss']:.4f} nats/char",
                         f"sample:\n{samples[e.temperature]}"]

    def registration(self, data: str, model: str) -> Registration:
        from components.model_file import read_metadata
        from components.workloads.char_lm.pyfunc import log_model

        def rescore(model_file: str) -> float:
            # each version with its own vocabulary, on the same val text: our ids renumbered into
            # its vocabulary as the windows are read (a character it lacks is its <unk>)
            import numpy as np

            from components.data.parquet import load_manifest, read_json
            from components.workloads.char_lm.data import Vocab
            from components.workloads.char_lm.evaluate import score_split
            from components.workloads.char_lm.model import load_model

            vocab = Vocab.from_json(read_json(Path(data) / "vocab.json"))
            net, own_vocab, _ = load_model(model_file)
            theirs = own_vocab.stoi
            mapping = np.array([0] + [theirs.get(c, 0) for c in vocab.itos[1:]], dtype=np.int64)
            return score_split(net, data, "val", load_manifest(data), mapping=mapping)

        return Registration(read_metadata(model), rescore, lambda: log_model(model).model_uri)


WORKLOAD = CharLM()
