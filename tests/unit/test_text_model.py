"""The lesson-10 classifier: encoder from the char-LM, concat pooling, ULMFiT's schedule."""

from __future__ import annotations

import pytest
import torch

from components.workloads.char_lm.model import CharLM
from components.workloads.text_classifier.model import (
    PoolingClassifier,
    apply_schedule,
    discriminative_groups,
    load_encoder,
    slanted_triangular,
    unfrozen_from,
)


def test_the_encoder_loads_from_a_char_lm_and_the_head_pools_three_ways():
    lm = CharLM(30, arch="lstm", n_fac=8, n_hidden=16, n_layers=2)
    clf = PoolingClassifier(30, 6, arch="lstm", n_fac=8, n_hidden=16, n_layers=2)
    copied = load_encoder(clf, lm.state_dict())
    assert "emb.weight" in copied and "rnn.weight_hh_l1" in copied and not any(c.startswith("out.") for c in copied)
    assert torch.equal(clf.rnn.weight_ih_l0, lm.rnn.weight_ih_l0)
    clf.eval()
    assert clf(torch.randint(0, 30, (50, 4))).shape == (4, 6)
    assert [len(g) for g in clf.layer_groups()][:3] == [1, 4, 4]  # embedding, LSTM layer 0, layer 1


def test_a_char_lm_of_another_shape_is_refused_by_name():
    with pytest.raises(ValueError, match="emb.weight .* n_hidden"):
        load_encoder(PoolingClassifier(30, 6, n_fac=8, n_hidden=16), CharLM(30, n_fac=12, n_hidden=16).state_dict())


def test_stlr_rises_to_one_and_decays_to_one_over_ratio():
    total = 200
    m = [slanted_triangular(s, total) for s in range(total)]
    assert m[0] == pytest.approx(1 / 32) and max(m) == pytest.approx(1.0) and m.index(max(m)) == 20
    assert m[-1] < 0.05 and all(a <= b for a, b in zip(m[:20], m[1:21], strict=True))


def test_discriminative_rates_and_gradual_unfreezing():
    clf = PoolingClassifier(30, 6, n_fac=8, n_hidden=16, n_layers=2)
    groups = discriminative_groups(clf, 0.01)
    assert [g["lr"] for g in groups] == pytest.approx([0.01 / 2.6**3, 0.01 / 2.6**2, 0.01 / 2.6, 0.01])
    assert [unfrozen_from(e, 4) for e in range(5)] == [3, 2, 1, 0, 0]
    opt = torch.optim.AdamW(groups, lr=0.01)
    apply_schedule(opt, step=20, total=200, epoch=0, every=1)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.0, pytest.approx(0.01)]
    # a frozen group does not move, even with weight decay
    before = clf.emb.weight.detach().clone()
    clf.train()
    torch.nn.functional.cross_entropy(clf(torch.randint(0, 30, (20, 8))), torch.randint(0, 6, (8,))).backward()
    opt.step()
    assert torch.equal(clf.emb.weight, before)


def test_the_loop_fine_tunes_from_the_char_lm_and_unfreezes_a_group_an_epoch(tmp_path):
    from components.training.driver import worker_config
    from components.training.session import LocalSession, running_in
    from components.workloads.text_classifier.loop import train_loop_per_worker
    from components.workloads.text_classifier.params import TextTrainParams
    from tests.unit.conftest import write_tiny_text

    data, lm = write_tiny_text(tmp_path)
    # the params.yaml defaults, shrunk: the loop reads every key a real run has
    tp = TextTrainParams().model_dump() | {"epochs": 3, "steps_per_epoch": 8, "bs": 16, "lr": 0.01, "dropout": 0.1,
                                           "head_hidden": 8, "unfreeze_every": 1, "num_workers": 1}
    local = LocalSession()
    try:
        with running_in(local):
            train_loop_per_worker(worker_config({"train": tp, "data": data}, 1, ("val_loss", "min")))
        reports = local.reports
        assert [r["groups_trained"] for r in reports] == [1, 2, 3]  # head, then the LSTM, then the embedding
        assert reports[-1]["val_accuracy"] > 0.8
        with local.checkpoint_dir() as d:
            state = torch.load(f"{d}/state.pt", weights_only=False)
        # the embedding moved only in the last epoch; the LSTM started from the char-LM's
        assert not torch.equal(state["model"]["emb.weight"], lm.state_dict()["emb.weight"])
    finally:
        local.close()


@pytest.mark.parametrize("tied", [False, True])
def test_adapt_fine_tunes_the_char_lm_on_train_text_and_writes_a_char_lm_file(tmp_path, tied):
    """ULMFiT's second step: the char-LM's file in, the same format out (its own code loads it,
    and so does the classifier's encoder), the loss on the train text down, the base named."""
    from components.data.parquet import file_md5
    from components.workloads.char_lm.data import Vocab
    from components.workloads.char_lm.model import load_model, publish_model
    from components.workloads.text_classifier.lm import fine_tune
    from components.workloads.text_classifier.staging import encoder_info

    itos = ("\x00", *sorted(set("abc \n")))
    cfg = {"vocab_size": len(itos), "arch": "lstm", "n_fac": 8, "n_hidden": 16, "tie_weights": tied}
    torch.manual_seed(0)
    base = tmp_path / "general.pt"
    publish_model(base, {"model": CharLM(**cfg).state_dict()}, Vocab(itos), cfg)
    texts = ["abc " * 8] * 64  # one pattern: a language model learns it in a few dozen steps
    out = tmp_path / "adapted.pt"
    s = fine_tune(base, texts, out, steps=60, bs=8, lr=0.03, lr_factor=2.6, cut_frac=0.1, stlr_ratio=32,
                  weight_decay=0.0, seed=0, log_every=1000)
    assert s["last_loss"] < 0.5 * s["first_loss"]
    net, vocab, blob = load_model(out)  # the char-LM's own loader reads it: the format is its
    assert tuple(vocab.itos) == itos and blob["fine_tuned_from"] == {"file": str(base), "md5": file_md5(base)}
    assert encoder_info(out)["fine_tuned_from"]["md5"] == file_md5(base)
    before = torch.load(base, weights_only=False)["model"]
    assert not torch.equal(before["rnn.weight_hh_l0"], blob["model"]["rnn.weight_hh_l0"])


def test_passages_encode_as_the_per_character_lookup_does():
    import random

    from components.workloads.text_classifier.data import encode_passages

    itos = ["<unk>", *"zyxabc \n", "é", "𝄞"]  # not in code point order; a 4-byte character
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcxyz \néq𝄞Z") for _ in range(50)) for _ in range(7)]
    stoi = {c: i for i, c in enumerate(itos)}
    want = [[stoi.get(t[j], 0) for t in texts] for j in range(50)]  # (chars, n); unknown -> 0
    got = encode_passages(texts, itos)
    assert got.dtype == torch.int64 and got.tolist() == want
