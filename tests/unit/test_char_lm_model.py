import pytest
import torch

from components.workloads.char_lm.model import CharLM, detach_hidden, generate, stream_loss


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_shapes_and_state(arch):
    m = CharLM(30, arch=arch, n_fac=8, n_hidden=16, n_layers=2, dropout=0.1)
    h = m.init_hidden(4)
    x = torch.randint(0, 30, (7, 4))  # (seq_len, bs)
    out, h2 = m(x, h)
    assert out.shape == (7, 4, 30)
    hs = h2 if isinstance(h2, tuple) else (h2,)
    assert all(t.shape == (2, 4, 16) for t in hs)


def test_state_carries_information_across_windows():
    torch.manual_seed(0)
    m = CharLM(30, n_fac=8, n_hidden=16).eval()
    x1, x2 = torch.randint(0, 30, (5, 2)), torch.randint(0, 30, (5, 2))
    _, h = m(x1, m.init_hidden(2))
    carried, _ = m(x2, h)
    fresh, _ = m(x2, m.init_hidden(2))
    assert not torch.allclose(carried, fresh)


def test_detach_cuts_gradients_at_the_window():
    torch.manual_seed(0)
    m = CharLM(30, n_fac=8, n_hidden=16)
    x1, x2 = torch.randint(0, 30, (5, 2)), torch.randint(0, 30, (5, 2))
    out1, h = m(x1, m.init_hidden(2))
    h = detach_hidden(h)
    assert all(not t.requires_grad for t in h)
    out2, _ = m(x2, h)
    emb_grad = torch.autograd.grad(out2.sum(), m.emb.weight)[0]
    # only characters of the second window receive gradient
    touched = set(torch.nonzero(emb_grad.abs().sum(1)).flatten().tolist())
    assert touched == set(x2.flatten().tolist())


def test_stream_loss_matches_a_single_pass():
    torch.manual_seed(0)
    m = CharLM(20, n_fac=8, n_hidden=16).eval()
    streams = torch.randint(0, 20, (50, 3))
    total, count = stream_loss(m, streams, bptt=7)
    logits, _ = m(streams[:-1], m.init_hidden(3))
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), streams[1:].flatten(), reduction="sum")
    assert count == 49 * 3
    assert total == pytest.approx(ref.item(), rel=1e-5)


def test_generate_is_seeded_multinomial():
    torch.manual_seed(0)
    m = CharLM(20, n_fac=8, n_hidden=16)
    a = generate(m, [1, 2, 3], 30, 1.0, torch.Generator().manual_seed(5))
    b = generate(m, [1, 2, 3], 30, 1.0, torch.Generator().manual_seed(5))
    c = generate(m, [1, 2, 3], 30, 1.0, torch.Generator().manual_seed(6))
    assert a == b and a != c and len(a) == 30 and all(0 <= i < 20 for i in a)
    # temperature -> 0 approaches argmax: all draws agree
    cold = {tuple(generate(m, [1], 10, 1e-4, torch.Generator().manual_seed(s))) for s in range(3)}
    assert len(cold) == 1


def test_published_model_bytes_depend_only_on_the_model(tmp_path):
    from components.data.parquet import file_sha256
    from components.workloads.char_lm.data import Vocab
    from components.workloads.char_lm.model import load_model, publish_model

    torch.manual_seed(0)
    m = CharLM(5, n_fac=4, n_hidden=8)
    cfg = {"vocab_size": 5, "arch": "lstm", "n_fac": 4, "n_hidden": 8, "n_layers": 1, "dropout": 0.0}
    vocab = Vocab(("<unk>", "a", "b", "c", "d"))
    for name in ("a.pt", "b.pt"):
        publish_model(tmp_path / name, {"model": m.state_dict()}, vocab, cfg)
    assert file_sha256(tmp_path / "a.pt") == file_sha256(tmp_path / "b.pt")
    loaded, v, _ = load_model(tmp_path / "a.pt")
    assert v == vocab and torch.equal(loaded.out.weight, m.out.weight)


def test_rnn_relu_with_identity_init():
    m = CharLM(10, arch="rnn", n_fac=4, n_hidden=6, n_layers=2, nonlinearity="relu", identity_init=True)
    assert m.rnn.nonlinearity == "relu"
    for layer in range(2):
        assert torch.equal(getattr(m.rnn, f"weight_hh_l{layer}"), torch.eye(6))
        assert torch.count_nonzero(getattr(m.rnn, f"bias_hh_l{layer}")) == 0
    with pytest.raises(ValueError, match="applies to arch .rnn. only"):
        CharLM(10, arch="lstm", identity_init=True)  # message: "applies to arch 'rnn' only"


@pytest.mark.parametrize("n_hidden", [4, 9])
def test_tied_weights_share_one_matrix(n_hidden):
    m = CharLM(10, n_fac=4, n_hidden=n_hidden, tie_weights=True)
    assert m.out.weight is m.emb.weight
    assert (m.proj is None) == (n_hidden == 4)
    out, _ = m(torch.randint(0, 10, (3, 2)))
    assert out.shape == (3, 2, 10)
    n_params = sum(p.numel() for p in m.parameters())
    untied = sum(p.numel() for p in CharLM(10, n_fac=4, n_hidden=n_hidden).parameters())
    assert n_params < untied + (n_hidden * 4 if n_hidden != 4 else 0)


def test_dropout_between_layers_and_before_output():
    m = CharLM(10, n_fac=4, n_hidden=8, n_layers=2, dropout=0.3)
    assert m.rnn.dropout == 0.3 and m.drop.p == 0.3
    assert CharLM(10, n_layers=1, dropout=0.3).rnn.dropout == 0.0  # no layer to drop between


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_state_reinitialised_when_batch_size_changes(arch):
    m = CharLM(10, arch=arch, n_fac=4, n_hidden=8).eval()
    _, h = m(torch.randint(0, 10, (5, 4)))
    out, h2 = m(torch.randint(0, 10, (5, 3)), h)  # 3 streams now: old state cannot apply
    first = h2[0] if isinstance(h2, tuple) else h2
    assert out.shape == (5, 3, 10) and first.shape[1] == 3


def test_embedding_size_grows_with_the_alphabet():
    from components.workloads.char_lm.model import embedding_size, model_kwargs

    assert embedding_size(65) == 42 and embedding_size(300) == 42  # English-sized alphabets keep 42
    assert embedding_size(2047) == 114 and embedding_size(10**6) == 600
    assert model_kwargs({"n_fac": None, "n_hidden": 16}, 2047)["n_fac"] == 114
    assert model_kwargs({"n_fac": 8, "n_hidden": 16}, 2047)["n_fac"] == 8  # a hand-set size is kept
    assert CharLM(**model_kwargs({"n_fac": None, "n_hidden": 16}, 900)).emb.embedding_dim == 72


def test_bigram_mixture_is_the_interpolation_of_both_models(tmp_path):
    import numpy as np

    from components.workloads.char_lm.baselines import BigramTable, baselines
    from components.workloads.char_lm.data import Vocab
    from components.workloads.char_lm.evaluate import fit_mixture, score_ids, stream_grid
    from components.workloads.char_lm.model import (
        BigramMixture,
        load_model,
        publish_model,
        target_probs,
    )

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, val = (torch.from_numpy(rng.integers(0, 12, n)) for n in (4000, 600))
    table = BigramTable.fit(train.numpy(), 12)
    lm = CharLM(12, n_fac=4, n_hidden=8).eval()
    # the table is the bigram `baselines` scores
    assert np.isclose(-np.log(table.probs(val.numpy()[:-1], val.numpy()[1:])).mean(),
                      baselines(train.numpy(), {"val": val.numpy()}, 12)["baseline_bigram_val_loss"])
    mix = BigramMixture(lm, table, 0.3)
    x = torch.randint(0, 12, (5, 3))
    logp, _ = mix(x)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(5, 3), atol=1e-5)  # a distribution at every step
    p_lm = torch.softmax(lm(x)[0], -1)
    p_bi = torch.from_numpy(np.stack([table.probs(np.full(12, a), np.arange(12)) for a in x.flatten().tolist()]))
    assert torch.allclose(logp.exp(), 0.3 * p_lm + 0.7 * p_bi.view(5, 3, 12).float(), atol=1e-5)
    # per-target probabilities agree with the stream loss
    grid = stream_grid(val)
    p, prev, nxt = target_probs(mix, grid, 128)
    assert np.isclose(-np.log(p).mean(), score_ids(mix, val), atol=1e-5)
    assert np.array_equal(prev[:3], grid[:1, :3].flatten().numpy())  # the first window's first row
    # an untrained char-LM loses to the bigram on bigram data: the chosen weight leans on the bigram
    fitted = fit_mixture(lm, train, val, 12)
    assert 0.0 <= fitted["lambda"] < 0.5
    vocab = Vocab(tuple(f"c{i}" for i in range(12)))
    cfg = {"vocab_size": 12, "arch": "lstm", "n_fac": 4, "n_hidden": 8, "n_layers": 1, "dropout": 0.0}
    publish_model(tmp_path / "m.pt", {"model": lm.state_dict()}, vocab, cfg, fitted)
    loaded, _, blob = load_model(tmp_path / "m.pt")
    assert isinstance(loaded, BigramMixture) and loaded.lam == fitted["lambda"]
    assert score_ids(loaded, val) <= min(score_ids(lm, val), score_ids(BigramMixture(lm, table, 0.0), val)) + 1e-6
    g = torch.Generator().manual_seed(0)
    assert len(generate(loaded, [1, 2], 7, 0.8, g)) == 7  # sampling works through the mixture
