"""Write dvc.yaml's per-workload parts from the workload table, as params.yaml is from the schema:
each stage's `foreach` items (one per workload, `TRAINYARD_WORKLOADS` ones included) and its
code deps, the files the stage imports (its import closure, `components.fingerprint`):

- the files every workload's stage runs outside its own package, listed once per stage;
- a workload's own modules that stage runs (`Workload.stage_modules`), in its item's `code`
  list, listed as `${item.code[0]}`, `${item.code[1]}`, ... slots (DVC cannot splice a list
  into deps; a shorter list repeats its last file, and DVC hashes a file listed twice once).

    python -m components.cli.stage_deps          # rewrite dvc.yaml in place
    python -m components.cli.stage_deps --check  # exit 1 if dvc.yaml is not up to date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from components import workloads
from components.data.parquet import atomic_path
from components.fingerprint import ROOT, stage_code_files
from components.params import EXTRA_STAGES, STAGES
from components.workloads.modules import MODEL_STAGES, model_files

CODE_LINE = re.compile(r"^        - (?:(?:components|pipelines)/\S*|\$\{item\.code\[\d+\]\})\n", re.M)
ITEM_NOTES = {
    "inputs": "the file or folder holding a local source: editing it in place reruns prepare",
    "meta": "the normalized folder's metadata file (vocabulary, statistics, classes)",
    "base": "a model file the workload starts from (`Workload.base_dep`), else its own manifest again: "
            "every run key holds each dep's content, so a new base model is a new sweep and run",
    "after": "what must be registered first (`Workload.registered_after`), else its own manifest again",
    "lm": "the general language model it adapts (`<workload>.adapt.base_model`)",
    "code": "its own modules this stage runs (`Workload.stage_modules`, with what they import)",
}
STAGE_ITEMS = {"prepare": ("inputs",), "tune": ("meta", "base"), "train": ("meta", "base"),
               "register": ("meta", "after"), "adapt": ("lm",)}


def stage_workloads(stage: str) -> list[str]:
    """The workloads that have `stage`: all for the seven, those listing it for an extra one."""
    return [n for n in workloads.names() if stage in STAGES or stage in workloads.get(n).extra_stages]


def own_dir(name: str) -> str:
    """The folder (or module file) a workload's own code lives in, repository-relative."""
    parts = workloads.module_of(name).split(".")
    folder = Path(*parts)
    return folder.as_posix() + "/" if (ROOT / folder).is_dir() else folder.as_posix() + ".py"


def split_code(stage: str) -> tuple[list[str], dict[str, list[str]]]:
    """Stage `stage`'s code deps: the files of ours the workloads' stage runs (sorted), and each
    workload's own files: its package's, its model's by import path, and, for a workload added
    to the table, those of ours no built-in one runs (a base class's modules: `TabularWorkload`'s
    loop is code of the tabular workloads' train, not of the char-LM's)."""
    runs = {name: stage_code_files(f"pipelines.{stage}", workloads.stage_code(name, stage))
            for name in stage_workloads(stage)}
    builtin = [n for n in runs if n in workloads.BUILTIN]
    theirs = set().union(*(runs[n] for n in builtin))  # shared, as they always were: the built-ins' locks hold
    shared: set[str] = set()
    own: dict[str, list[str]] = {}
    for name, files in runs.items():
        mine = own_dir(name)
        own[name] = [f for f in files if f.startswith(mine) or (name not in builtin and f not in theirs)]
        own[name] += user_model_files(name, stage)
        shared |= set(files) - set(own[name])
    return sorted(shared), own


def user_model_files(name: str, stage: str, root: Path = ROOT) -> list[str]:
    """The project's files a model named by import path runs, for the stages that build it."""
    return model_files(name, root) if stage in MODEL_STAGES else []


def item_values(name: str, stage: str) -> dict[str, str]:
    """The non-code values of workload `name`'s `foreach` item in `stage`."""
    w = workloads.get(name)
    manifest = f"data/{name}/normalized/manifest.json"
    values = {"inputs": f"${{{name}.prepare.inputs}}", "meta": w.data_meta,
              "base": f"${{{name}.{w.base_dep}}}" if w.base_dep else manifest,
              "after": f"registry/{w.registered_after}/registered.json" if w.registered_after else manifest,
              "lm": f"${{{name}.adapt.base_model}}"}
    return {k: values[k] for k in STAGE_ITEMS.get(stage, ())}


def foreach_block(stage: str, own: dict[str, list[str]]) -> str:
    """The `foreach:` block of `stage`: one item per workload, written from the table."""
    keys = (*STAGE_ITEMS.get(stage, ()), "code")
    lines = ["    # written by python -m components.cli.stage_deps from the workload table:\n"]
    lines += [f"    #   {k}: {ITEM_NOTES[k]}\n" for k in keys]
    lines.append("    foreach:\n")
    for name in stage_workloads(stage):
        lines.append(f"      {name}:\n")
        lines += [f"        {k}: \"{v}\"\n" if "$" in v else f"        {k}: {v}\n"
                  for k, v in item_values(name, stage).items()]
        lines.append("        code:\n")
        lines += [f"          - {f}\n" for f in own[name]]
    return "".join(lines)


def rewrite_stage(stage: str, block: str) -> str:
    """One stage's block of dvc.yaml with its foreach items and code deps written anew."""
    shared, own = split_code(stage)
    slots = max(len(files) for files in own.values())
    for files in own.values():
        files += [files[-1]] * (slots - len(files))
    start = re.search(r"^(    #[^\n]*\n)*    foreach:\n", block, re.M)
    do = re.search(r"^    do:\n", block, re.M)
    if start is None or do is None:
        raise ValueError(f"dvc.yaml: stage {stage!r} is not a foreach over the workloads")
    block = block[:start.start()] + foreach_block(stage, own) + block[do.start():]
    first = CODE_LINE.search(block)
    if first is None:
        raise ValueError(f"dvc.yaml: stage {stage!r} lists no code deps to rewrite")
    lines = [f"        - {f}\n" for f in shared] + [f"        - ${{item.code[{i}]}}\n" for i in range(slots)]
    block = CODE_LINE.sub("", block)
    return block[:first.start()] + "".join(lines) + block[first.start():]


def rewrite(text: str) -> str:
    """dvc.yaml with every stage's foreach items and code deps written from the table."""
    out, pos = [], 0
    for m in re.finditer(r"^  (\w+):\n", text, re.M):
        if m.start() < pos:
            continue
        end = re.compile(r"^  \w+:\n|^\S", re.M).search(text, m.end())
        stop = end.start() if end else len(text)
        # a stage's leading comments belong to the block before it: keep them where they are
        out.append(text[pos:m.start()])
        block = text[m.start():stop]
        out.append(rewrite_stage(m.group(1), block) if m.group(1) in (*STAGES, *EXTRA_STAGES) else block)
        pos = stop
    out.append(text[pos:])
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when dvc.yaml differs")
    ap.add_argument("--file", type=Path, default=Path("dvc.yaml"), help="the dvc.yaml to write (default: ./dvc.yaml)")
    args = ap.parse_args()
    text = args.file.read_text()
    new = rewrite(text)
    if args.check:
        if new != text:
            sys.exit(f"error: {args.file}: stage items or code deps are not up to date; "
                     "run python -m components.cli.stage_deps")
        return
    with atomic_path(args.file) as tmp:
        tmp.write_text(new)
    print(f"[stage_deps] {args.file}: the items and code deps of {len(STAGES) + len(EXTRA_STAGES)} stages written "
          f"for {len(workloads.names())} workloads")


if __name__ == "__main__":
    main()
