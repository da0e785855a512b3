"""The image the Dockerfile describes, without Docker: its COPY lines replayed into a folder
and its `RUN dvc ...` lines run there (no .git, as in the image)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "infra" / "Dockerfile"


def build_context(dest: Path) -> Path:
    """`dest` filled as the image's WORKDIR would be; returns it."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *srcs, target = line.split()[1:]
            for src in srcs:  # Docker's rules: a folder's contents go to target; a file into target/ or as target
                source = REPO / src.rstrip("/")
                assert source.exists(), f"Dockerfile copies missing {src}"
                where = dest / target
                if source.is_dir():
                    shutil.copytree(source, where, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    where = where / source.name if target.endswith("/") else where
                    where.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, where)
        elif line.startswith("RUN dvc "):
            subprocess.run([str(Path(sys.executable).parent / "dvc"), *shlex.split(line)[2:]], cwd=dest,
                           check=True, capture_output=True)
    return dest
