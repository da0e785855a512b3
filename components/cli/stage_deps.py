"""Write each stage's code dependencies into dvc.yaml: the files its script imports inside
components/ and pipelines/ (its import closure), with a workload's own package listed as one
folder, `components/workloads/${key}`, so a new workload needs no edit here.

    python -m components.cli.stage_deps          # rewrite dvc.yaml's code deps in place
    python -m components.cli.stage_deps --check  # exit 1 if dvc.yaml is not up to date
"""

from __future__ import annotations

import argparse
import re
import sys

from components import workloads
from components.data.parquet import atomic_path
from components.fingerprint import ROOT, stage_code_files
from components.params import STAGES

CODE_LINE = re.compile(r"^        - (components|pipelines)/\S*\n", re.M)
WORKLOAD_DIR = "components/workloads/${key}"


def code_deps(stage: str) -> list[str]:
    """The code deps of `stage` for every workload: shared files, then the workload's folder."""
    files: set[str] = set()
    for name in workloads.names():
        own = f"components/workloads/{name}/"
        files |= {f for f in stage_code_files(f"pipelines.{stage}", name) if not f.startswith(own)}
    return [*sorted(files), WORKLOAD_DIR]


def rewrite(text: str) -> str:
    """dvc.yaml with each stage's code dep lines replaced by `code_deps(stage)`."""
    out, pos = [], 0
    for m in re.finditer(r"^  (\w+):\n", text, re.M):
        out.append(text[pos:m.start()])
        end = re.compile(r"^  \w+:\n|^\S", re.M).search(text, m.end())
        stop = end.start() if end else len(text)
        block = text[m.start():stop]
        stage = m.group(1)
        if stage in STAGES:
            lines = [f"        - {f}\n" for f in code_deps(stage)]
            first = CODE_LINE.search(block)
            if first:
                block = CODE_LINE.sub("", block)
                block = block[:first.start()] + "".join(lines) + block[first.start():]
        out.append(block)
        pos = stop
    out.append(text[pos:])
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when dvc.yaml differs")
    args = ap.parse_args()
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new = rewrite(text)
    if args.check:
        if new != text:
            sys.exit(f"error: {path.name}: code deps are not up to date; run python -m components.cli.stage_deps")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(new)
    print(f"[stage_deps] {path.name}: code deps of {len(STAGES)} stages written")


if __name__ == "__main__":
    main()
