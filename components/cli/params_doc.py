"""Write `params.yaml` and docs/knobs.md's knob tables from the params schema, where every key's
default and meaning are declared once (`knob(...)` in each workload's `params.py`).

    python -m components.cli.params_doc           # rewrite params.yaml and docs/knobs.md's tables
    python -m components.cli.params_doc --check   # exit 1 when either differs from the schema
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml
from pydantic import BaseModel

from components import workloads
from components.data.parquet import atomic_path
from components.fingerprint import ROOT

HEADER = """\
# Every knob of the pipeline, by workload then stage: <workload>.<stage>.<key>.
# Validated before any stage runs: a bad value, or a key the workload does not have, stops
# the stage with one line naming the key. Paths live in dvc.yaml, not here.
# Written from the schema (python -m components.cli.params_doc): these values are the
# defaults, so a key left out means the value shown here.
"""
BEGIN, END = "<!-- knobs: written by python -m components.cli.params_doc -->", "<!-- knobs end -->"
COMMENT_AT = 34  # column of the `# ...` comments


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def _scalar(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_scalar(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip()


def _wrap(text: str, indent: str, width: int = 96) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(indent) + 2 + len(line) + 1 + len(word) > width:
            lines.append(f"{indent}# {line}")
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, f"{indent}# {line}"] if line else lines


def _sections(workload: type[BaseModel]):
    for field_name, field in workload.model_fields.items():
        yield field.alias or field_name, field.annotation


def _keys(cls: type[BaseModel]) -> list[str]:
    # a section's own keys first (a train section's model knobs), then those it shares
    own = list(getattr(cls, "__own_keys__", ())) or [k for k in cls.__annotations__ if k in cls.model_fields]
    return own + [k for k in cls.model_fields if k not in own]


def _value(section: BaseModel, key: str) -> Any:
    return section.model_dump(mode="json", exclude_none=False)[key]


def render_params_yaml() -> str:
    """params.yaml: every workload's sections with their defaults, each key with its meaning."""
    out = [HEADER]
    for name in workloads.names():
        wl = workloads.get(name).params
        out.append(f"\n{name}:  # {_doc(wl)}\n")
        for stage, cls in _sections(wl):
            out.append("\n" + "\n".join(_wrap(_doc(cls), "  ")) + "\n" if _doc(cls) else "\n")
            out.append(f"  {stage}:\n")
            section = cls()
            for key in _keys(cls):
                field, value = cls.model_fields[key], _value(section, key)
                if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                    out.append(_line(f"    {key}:", field.description))
                    for k, v in value.items():
                        out.append(f"      {k}: {_scalar({a: b for a, b in v.items() if b is not None})}\n")
                else:
                    out.append(_line(f"    {key}: {_scalar(value)}", field.description))
    return "".join(out)


def _line(code: str, doc: str | None) -> str:
    return f"{code.ljust(COMMENT_AT - 1)} # {doc}\n" if doc else f"{code}\n"


def render_knob_tables() -> str:
    """docs/knobs.md's knob tables: one per workload, every key with its default and meaning."""
    out = [BEGIN, ""]
    for name in workloads.names():
        wl = workloads.get(name).params
        out += [f"**`{name}`**: {_doc(wl)}", "", "| key | default | meaning |", "|---|---|---|"]
        for stage, cls in _sections(wl):
            section = cls()
            for key in _keys(cls):
                field = cls.model_fields[key]
                default = _scalar(_value(section, key)).replace("|", "\\|")
                if len(default) > 40:
                    default = "see params.yaml"
                meaning = (field.description or "").replace("|", "\\|")
                out.append(f"| `{stage}.{key}` | `{default}` | {meaning} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def readme_with_tables(readme: str) -> str:
    """README.md with the text between the knob markers replaced by `render_knob_tables()`."""
    start, stop = readme.find(BEGIN), readme.find(END)
    if start < 0 or stop < 0:
        raise ValueError(f"docs/knobs.md has no knob table markers ({BEGIN} ... {END})")
    return readme[:start] + render_knob_tables() + readme[stop + len(END):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when a file differs")
    args = ap.parse_args()
    targets = {ROOT / "params.yaml": render_params_yaml(),
               ROOT / "docs/knobs.md": readme_with_tables((ROOT / "docs/knobs.md").read_text())}
    stale = [p.name for p, text in targets.items() if p.read_text() != text]
    if args.check:
        if stale:
            sys.exit(f"error: {', '.join(stale)} differ from the params schema; run python -m components.cli.params_doc")
        return
    for path, text in targets.items():
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(f"[params_doc] wrote {', '.join(p.name for p in targets)}")


if __name__ == "__main__":
    main()
