"""A registry review: the challenger beside the champion, as a person decides on it. Gathered
from the registry and the two training runs (evaluate's numbers and reports, the lineage tags
register wrote), rendered as Markdown, logged to the challenger's run (`review/vN.md`) and set as
the version's description, so the MLflow UI shows the same page the CLI prints."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.tracking import registry

SAMPLE_LINES = 12  # of the char-LM's samples.txt: enough to read the voice, short enough to scan


@dataclass
class Side:
    """One version as the review shows it."""

    version: str
    tags: dict[str, str]
    aliases: list[str]
    metrics: dict[str, float]  # evaluate's numbers (eval_ prefix dropped)
    train_s: float | None
    params: dict[str, Any]
    evaluation: dict[str, Any]  # evaluate's eval.json where the run has it (per-class accuracy and the rest)
    reports: list[str]  # evaluate's report files on the run
    samples: list[str]  # the char-LM's generated text, where there is one


def _side(c, name: str, version: str) -> Side:
    d = registry.describe(c, name, version)
    run = c.get_run(d["run_id"]) if d["run_id"] else None
    metrics = {k.removeprefix("eval_"): v for k, v in (run.data.metrics if run else {}).items()
               if k.startswith("eval_")}
    reports, evaluation, samples = [], {}, []
    if run:
        reports = [a.path for a in c.list_artifacts(run.info.run_id, "evaluation")]
        with tempfile.TemporaryDirectory() as tmp:
            for want in ("evaluation/eval.json", "evaluation/samples.txt"):
                if want in reports:
                    text = Path(c.download_artifacts(run.info.run_id, want, tmp)).read_text()
                    if want.endswith(".json"):
                        evaluation = json.loads(text)
                    else:
                        samples = [ln for ln in text.splitlines() if ln.strip()][:SAMPLE_LINES]
    return Side(version=str(version), tags=d["tags"], aliases=d["aliases"], metrics=metrics,
                train_s=run.data.metrics.get("train_s") if run else None,
                params=json.loads(d["tags"].get("trainyard.params", "{}")), evaluation=evaluation,
                reports=[r for r in reports if not r.endswith(".json")], samples=samples)


def gather(c, name: str, version: str | None) -> tuple[Side, Side | None]:
    """The challenger (`version`, else the newest version awaiting a verdict) and the champion
    (None when there is none, or the challenger is it)."""
    version = version or registry.awaiting(c, name)
    if version is None:
        raise ValueError(f"{name}: no version awaits a verdict (each is approved, rejected or archived); "
                         "name one: `registry review VERSION`")
    champ = registry.alias_version(c, name, registry.CHAMPION)
    if champ == str(version):  # a champion under review: beside the one it replaced
        champ = registry.replaced(c, name, version)
    return _side(c, name, version), (_side(c, name, champ) if champ else None)


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def _gain(new: float, old: float, mode: str) -> float:
    return old - new if mode == "min" else new - old


def render(name: str, new: Side, champ: Side | None, *, metric: str, mode: str, min_delta: float) -> str:
    """The review as Markdown."""
    if registry.CHAMPION in new.aliases:
        title = (f"v{new.version}, the champion (crowned by {new.tags.get('trainyard.promoted_by', '-')})"
                 + (f", against v{champ.version}, the champion it replaced" if champ else ""))
    elif champ:
        title = f"v{new.version} (challenger) against v{champ.version} (champion)"
    else:
        title = f"v{new.version} (challenger); no champion yet"
    lines = [f"# Review: {name} {title}", ""]
    value, held = new.metrics.get(metric), champ.metrics.get(metric) if champ else None
    gate = json.loads(new.tags.get(registry.GATE, "{}"))
    verdict = registry.verdict(new.tags)
    lines += ["## Decision", ""]
    if value is not None and held is not None:
        gain = _gain(value, held, mode)
        clears = registry.better(value, held, mode, min_delta)
        lines.append(f"- **{metric}** ({mode}): {value:.4f} against {held:.4f}: gain {gain:+.4f}; "
                     f"register.min_delta {min_delta:g}: **{'clears' if clears else 'does not clear'}**")
        if new.tags.get(registry.VAL_DATA) != champ.tags.get(registry.VAL_DATA):
            lines.append("- the champion's number was measured on other val data: register re-scores it on the "
                         "challenger's before deciding; compare with care")
    elif value is not None:
        lines.append(f"- **{metric}** ({mode}): {value:.4f}; no champion to compare with")
    if base := new.tags.get(registry.BASELINE):
        beats = new.tags.get(registry.BEATS_BASELINE) == "true"
        lines.append(f"- baseline {base}: {'beaten' if beats else '**not beaten**'}")
    if gate:
        lines.append(f"- automatic gate at register: {'would crown' if gate['crown'] else 'would not crown'} "
                     f"({gate['why']})")
    lines.append(f"- verdict: {verdict['verdict']} by {verdict['who']} at {verdict['at']}: {verdict['why']}"
                 if verdict else "- verdict: none yet (`registry approve` / `registry reject`)")
    lines += ["", "## Metrics (val and test, with the baselines evaluate measured)", "",
              f"| metric | v{new.version} | " + (f"v{champ.version} | change |" if champ else ""),
              "|---|---|" + ("---|---|" if champ else "")]
    for k in sorted(set(new.metrics) | set(champ.metrics if champ else {})):
        a, b = new.metrics.get(k), champ.metrics.get(k) if champ else None
        row = f"| {k} | {_num(a)} |"
        if champ:
            row += f" {_num(b)} | {_num(a - b) if a is not None and b is not None else '-'} |"
        lines.append(row)
    lines += ["", "## Where each came from", ""]
    sides = [new, *([champ] if champ else [])]
    lines.append("| | " + " | ".join(f"v{s.version}" for s in sides) + " |")
    lines.append("|---|" + "---|" * len(sides))
    rows = {"code commit": [s.tags.get(registry.COMMIT_TAG, "-")[:12] for s in sides],
            "architecture": [s.tags.get("trainyard.arch", "-") for s in sides],
            "training seconds": [_num(s.train_s) for s in sides],
            "training run": [s.tags.get("trainyard.train_run_id", "-") for s in sides]}
    for path in sorted({p for s in sides for p in registry.data_digests(s.tags)}):
        rows[f"data {path}"] = [_data_cell(s.tags, path) for s in sides]
    if any(registry.BASE_MD5_TAG in s.tags for s in sides):
        rows["fine-tuned from"] = [s.tags.get("trainyard.base.version", "-") for s in sides]
    lines += [f"| {k} | " + " | ".join(str(x) for x in v) + " |" for k, v in rows.items()]
    if champ:
        differ = sorted(k for k in set(new.params) | set(champ.params) if new.params.get(k) != champ.params.get(k))
        lines += ["", "## Params that differ", ""]
        lines += ([f"- `{k}`: {champ.params.get(k)!r} -> {new.params.get(k)!r}" for k in differ]
                  or ["- none: the same train params"])
    lines += _look_at(new, champ)
    return "\n".join(lines) + "\n"


def _data_cell(tags: dict[str, str], path: str) -> str:
    md5 = registry.data_digests(tags).get(path, "-")[:12]
    n = json.loads(tags.get(registry.ROWS, "{}")).get(path)
    return f"md5 {md5}" + (f", {n} rows" if n is not None else "")


def _look_at(new: Side, champ: Side | None) -> list[str]:
    """What a person reads before deciding: generated text, per-class accuracy, the report files."""
    out = ["", "## What to look at", ""]
    for s in [new, *([champ] if champ else [])]:
        if s.samples:
            out += [f"Samples from v{s.version}:", "", "```", *s.samples, "```", ""]
    for split in ("val", "test"):
        per = {s.version: s.evaluation.get(f"{split}_per_class_accuracy") for s in [new, *([champ] if champ else [])]}
        if per.get(new.version):
            classes = sorted(per[new.version])
            out += [f"Per-class {split} accuracy:", "", "| class | " + " | ".join(f"v{v}" for v in per) + " |",
                    "|---|" + "---|" * len(per)]
            out += [f"| {k} | " + " | ".join(_num((p or {}).get(k)) for p in per.values()) + " |" for k in classes]
            out.append("")
    if new.reports:
        out.append(f"Reports on v{new.version}'s run (MLflow artifacts): " + ", ".join(f"`{r}`" for r in new.reports))
    return out


def publish(c, name: str, new: Side, text: str, out: Path) -> Path:
    """Write the review to `out` (temp file, then rename), log it to the challenger's run and set it
    as the version's description (the MLflow UI's version page)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    run_id = new.tags.get("trainyard.train_run_id") or c.get_model_version(name, new.version).run_id
    c.log_text(run_id, text, f"review/v{new.version}.md")
    c.update_model_version(name, new.version, description=text)
    return out
