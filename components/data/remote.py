"""Sources where they live: an object store (`s3://bucket/key`, any URI pyarrow's filesystems
read) as well as a local path, for the few things prepare does with a source: list a folder,
open a file, know a size. Credentials and the endpoint come from the environment, as the AWS
tools read them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an
S3-compatible server); none are written anywhere by this project."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from components.data.errors import SourceError


def is_remote(source: str) -> bool:
    """An object-store URI (not an http(s) download, not a local path)."""
    return "://" in source and not source.startswith(("http://", "https://", "file://"))


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow: ArrowInvalid for an unknown scheme, OSError for a bad URI
        raise SourceError(f"source {uri}: not a URI this machine can read ({err})") from None


def _call(uri: str, what: str, fn: Any) -> Any:
    """`fn()`, an object store's failure turned into one line naming the URI."""
    try:
        return fn()
    except FileNotFoundError:
        raise SourceError(f"source {uri}: not found") from None
    except OSError as err:  # pyarrow's S3 errors: no answer, refused credentials, no such bucket
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(f"source {uri}: {what} failed ({first}); are AWS_ENDPOINT_URL and the credentials "
                          "in the environment right?") from None


def kind(uri: str) -> str:
    """'file', 'dir' or 'missing'."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    info = _call(uri, "looking it up", lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.File:
        return "file"
    if info.type == pafs.FileType.Directory:
        return "dir"
    # an object store has no folders, only keys under a prefix
    sel = pafs.FileSelector(path.rstrip("/"), allow_not_found=True)
    return "dir" if _call(uri, "listing it", lambda: fs.get_file_info(sel)) else "missing"


def listdir(uri: str) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry directly under `uri`, sorted by name."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    infos = _call(uri, "listing it", lambda: fs.get_file_info(pafs.FileSelector(path.rstrip("/"),
                                                                                   allow_not_found=True)))
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def size(uri: str) -> int:
    """Bytes in the file at `uri`."""
    fs, path = _fs(uri)
    return int(_call(uri, "looking it up", lambda: fs.get_file_info(path)).size or 0)


def open_input(uri: str) -> IO[bytes]:
    """A file at `uri`, open for reading (seekable)."""
    fs, path = _fs(uri)
    return _call(uri, "opening it", lambda: fs.open_input_file(path))


def join(root: str | Path, *parts: str) -> str | Path:
    """`root / parts`, for a URI as for a path."""
    if isinstance(root, Path):
        return root.joinpath(*parts)
    return "/".join([root.rstrip("/"), *parts])
