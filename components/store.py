"""The run store: where checkpoints, Tune state and this machine's own state live.

`TRAINYARD_STORE` (default `./.trainyard`) holds checkpoints and Tune state outside DVC's
outputs (DVC deletes a stage's outputs before running it), keyed by stage, code, data and
params so a re-run after a crash resumes. A URI (`s3://...`) works too: it goes through pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyarrow costs a stage ~0.25 s to import: only where a store path is read
    import pyarrow.fs as pafs


def project_root() -> Path:
    """The project's root: `DVC_ROOT` (DVC sets it for every stage; in `dvc exp run --temp` and
    queued experiments it names the project, not the temporary copy the stage runs in), else
    the working directory. Relative stores resolve against it, so experiments run elsewhere
    still record into the project's run store and MLflow."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def in_project(path: str | Path) -> Path:
    """`path` made absolute against the project's root (absolute paths stay as they are)."""
    return (project_root() / path).resolve()


def store_root() -> str:
    """The run store: `TRAINYARD_STORE`, or `.trainyard` in the project's root (absolute)."""
    root = os.environ.get("TRAINYARD_STORE", ".trainyard")
    return root if "://" in root else str(in_project(root))


def params_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: the key of a stage's state in the run store."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def stage_storage(workload: str, stage: str) -> str:
    """The run-store folder of a stage (a Ray `storage_path`)."""
    root = store_root()
    return f"{root.rstrip('/')}/{workload}/{stage}" if "://" in root else str(Path(root) / workload / stage)


def local_state_dir() -> Path:
    """A local folder for this machine's own state (downloads, Ray process records, the
    MLflow journal): the run store when it is local, else `.trainyard` in the project."""
    root = store_root()
    return Path(root) if "://" not in root else in_project(".trainyard")


def store_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a run-store path or URI, and the path within it."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).resolve()))


def write_store_json(uri: str, obj: Any) -> None:
    """Write a small JSON file in the run store (a local path or a URI), atomically where the
    filesystem allows (a local rename; object stores publish whole objects anyway)."""
    fs, path = store_fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(obj, sort_keys=True).encode())
    fs.move(tmp, path)



class DamagedState(Exception):
    """State in the run store that is there but does not load: cut short by a full disk, an
    interrupted copy, a bad block. Whoever reads it falls back (to older state, or a fresh
    start) and says so in one line; a stage never stays broken because of its own leftovers."""


def set_aside(uri: str, stamp: int | None = None) -> str:
    """Rename a run-store file or folder that does not load to `<uri>.damaged-<time>`: out of
    the stage's way, kept for a person to look at. Returns the new name (its last part)."""
    import time

    fs, path = store_fs(uri)
    aside = f"{path}.damaged-{int(time.time()) if stamp is None else stamp}"
    fs.move(path, aside)
    return aside.rsplit("/", 1)[-1]


def read_store_json(uri: str) -> Any | None:
    """A JSON file from the run store, or None when there is none; `DamagedState` when it is
    there but does not parse."""
    import pyarrow.fs as pafs

    fs, path = store_fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        data = f.read()
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedState(f"{uri} does not load ({len(data)} bytes, {err})") from err


def download_cache(workload: str) -> Path:
    """A local folder for downloads, outside DVC's outputs (kept across re-runs)."""
    return local_state_dir() / workload / "downloads"


def verified_cache() -> Path:
    """Where `check_table` notes the data files whose sha256 it checked (per file and stat)."""
    return local_state_dir() / "verified"


def stage_data(files: dict[str, str | Path], digests: dict[str, str] | None = None) -> dict[str, str]:
    """Make data files readable from every Ray node; return name -> path or URI.

    With a local store, nodes share this filesystem: absolute paths. With a URI store the
    files are copied once into `<store>/data/<content hash>/` and workers read them there;
    `digests` (name -> sha256, from a checked manifest) saves hashing them again.
    """
    root = store_root()
    if "://" not in root:
        return {k: str(Path(v).resolve()) for k, v in files.items()}
    import pyarrow.fs as pafs

    from components.data.parquet import file_sha256

    fs, base = pafs.FileSystem.from_uri(root)
    out = {}
    for name, path in files.items():
        digest = ((digests or {}).get(name) or file_sha256(path))[:16]
        dest = f"{base.rstrip('/')}/data/{digest}/{Path(path).name}"
        if fs.get_file_info(dest).type == pafs.FileType.NotFound:
            fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(Path(path).resolve()), dest, destination_filesystem=fs)
        out[name] = f"{root.split('://', 1)[0]}://{dest}"
    return out


def checked_and_staged(folder: Path, schema: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Check the train and val splits' parts against the manifest (`open_split`: each part's footer,
    size and rows; its sha256 once per file and stat, `verified_cache`), then stage them for
    workers: a start costs O(parts), not O(data), once the files have been checked. Each split
    as workers get it: `{"uris": [...], "rows": [...]}`."""
    from components.data.dataset import open_split
    from components.data.parquet import load_manifest

    manifest = load_manifest(folder)
    out = {}
    for name in ("train", "val"):
        split = open_split(folder, name, manifest, schema, cache=verified_cache())
        parts = manifest["files"][name]["parts"]
        staged = stage_data({p["file"]: u for p, u in zip(parts, split.uris, strict=True)},
                            {p["file"]: p["sha256"] for p in parts})
        out[name] = {"uris": [staged[p["file"]] for p in parts], "rows": list(split.part_rows)}
    return manifest, out
