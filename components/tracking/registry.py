"""The model registry with MLflow 3 aliases: `challenger` is the newest registered version,
`champion` the one people and services load. Lineage and decisions are version tags.

Registration is idempotent: a version is keyed by the sha256 of the model file, so
registering the same trained model again returns the existing version.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
from collections.abc import Callable
from typing import Any

from components.tracking.lease import champion_lock, crowned, decide, retrying

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_SHA = "trainyard.model_sha256"
VAL_DATA = "trainyard.val_data_md5"
HISTORY = "trainyard.champion_history"  # registered-model tag: champion versions, oldest first
BASELINE = "trainyard.baseline"  # version tag: the best baseline on the same val data, name=value
BEATS_BASELINE = "trainyard.beats_baseline"  # version tag: true / false
ARCHIVED = "trainyard.archived"  # version tag: JSON {who, why, at}; no alias may point at it
DATA_TAG = "trainyard.data."  # version tags: trainyard.data.<path> = md5 (the numbers in dvc.lock)
COMMIT_TAG = "trainyard.git_commit"
ROWS = "trainyard.data_rows"  # version tag: JSON {data path: rows} of its Parquet data files
GATE = "trainyard.gate"  # version tag: JSON {crown, why}: what the automatic gate decided at register
VERDICT = "trainyard.verdict"  # version tag: JSON {verdict: approved | rejected, who, why, at}


def _metric_tag(metric: str) -> str:
    return f"trainyard.metric.{metric}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def better(new: float, old: float, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `new` beats `old` under `mode` (min or max): strictly, and by at least `min_delta`."""
    gain = old - new if mode == "min" else new - old
    return gain > 0 and gain >= min_delta


def ensure_model(c, name: str, description: str = "") -> None:
    """Create the registered model if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=description)
        except MlflowException:  # created meanwhile by a concurrent register
            c.get_registered_model(name)


def alias_version(c, name: str, alias: str) -> str | None:
    """The version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def find_version(c, name: str, model_sha256: str):
    """The version registered from a model file with this sha256, or None."""
    for v in c.search_model_versions(f"name = '{name}'"):
        if v.tags.get(MODEL_SHA) == model_sha256:
            return v
    return None


def _history(c, name: str) -> list[str]:
    raw = c.get_registered_model(name).tags.get(HISTORY, "")
    return [v for v in raw.split(",") if v]


def set_champion(c, name: str, version: str, who: str, why: str) -> None:
    """Point `champion` at `version` by compare-and-set (the history gains it), then record who
    and why on the version."""
    version = str(version)
    with champion_lock(c, name, history_tag=HISTORY) as gate:
        decide(gate, lambda _champ, hist: (version, crowned(hist, version)), who="promote", always=True)
    _record_promotion(c, name, version, who, why)


def _record_promotion(c, name: str, version: str, who: str, why: str) -> None:
    retrying(c.set_model_version_tag, name, version, "trainyard.promoted_by", who)
    retrying(c.set_model_version_tag, name, version, "trainyard.promoted_reason", why)
    retrying(c.set_model_version_tag, name, version, "trainyard.promoted_at", _now())


def register(c, *, name: str, model_sha256: str, log_model: Callable[[], str], run_id: str,
             metric: str, value: float, mode: str, val_data_md5: str, lineage: dict[str, str],
             rescore: Callable[[Any], float], floor: tuple[str, float] | None = None,
             min_delta: float = 0.0, require_approval: bool = False) -> dict[str, Any]:
    """Register (once) and decide aliases; returns the registry's view of this model.

    `log_model()` logs the pyfunc and returns its URI (called only for a new version);
    `rescore(version)` scores the current champion on our val data when its recorded
    metric was measured on other data, so the comparison is always like for like.
    `floor`: (name, value) of the best baseline on the same val data; a model that does not
    beat it is registered and left challenger, never crowned here (`promote` still can).
    `min_delta`: the least improvement over the champion that moves the crown (noise is not progress).
    `require_approval`: the gate's verdict is recorded (tag `trainyard.gate`) but only `approve`
    moves the crown.
    """
    ensure_model(c, name, "Registered by the trainyard pipeline; see version tags for lineage.")
    with champion_lock(c, name, history_tag=HISTORY) as gate:
        return _register_locked(c, gate, name=name, model_sha256=model_sha256, log_model=log_model, run_id=run_id,
                                metric=metric, value=value, mode=mode, val_data_md5=val_data_md5,
                                lineage=lineage, rescore=rescore, floor=floor, min_delta=min_delta,
                                require_approval=require_approval)


def _register_locked(c, gate, *, name: str, model_sha256: str, log_model: Callable[[], str], run_id: str,
                     metric: str, value: float, mode: str, val_data_md5: str, lineage: dict[str, str],
                     rescore: Callable[[Any], float], floor: tuple[str, float] | None,
                     min_delta: float, require_approval: bool) -> dict[str, Any]:
    version = find_version(c, name, model_sha256)
    if version is None:
        tags = {MODEL_SHA: model_sha256, VAL_DATA: val_data_md5, _metric_tag(metric): repr(value),
                "trainyard.metric_name": metric, **lineage}
        import mlflow

        mv = retrying(mlflow.register_model, log_model(), name, tags=tags)  # waits until READY
        version = c.get_model_version(name, mv.version)
    v = str(version.version)
    retrying(c.set_registered_model_alias, name, CHALLENGER, v)
    if floor is not None:
        retrying(c.set_model_version_tag, name, v, BASELINE, f"{floor[0]}={floor[1]:.4f}")
        retrying(c.set_model_version_tag, name, v, BEATS_BASELINE, str(better(value, floor[1], mode)).lower())
    seen: dict[str, Any] = {}

    def plan(champ: str | None, hist: list[str]) -> tuple[str, list[str]] | None:
        seen["champ"] = champ
        seen["crown"], seen["why"] = _gate(c, name, v, champ, metric=metric, value=value, mode=mode,
                                           val_data_md5=val_data_md5, rescore=rescore, floor=floor,
                                           min_delta=min_delta)
        if not seen["crown"] or champ == v or require_approval:
            return None
        return v, crowned(hist, v)

    decide(gate, plan)
    crown, why = seen["crown"], seen["why"]
    retrying(c.set_model_version_tag, name, v, GATE, json.dumps({"crown": crown, "why": why}))
    if not crown or seen["champ"] == v:
        decision = why
    elif require_approval:
        decision = f"challenger, awaiting approval (register.require_approval): the gate would crown it: {why}"
    else:
        _record_promotion(c, name, v, "register", why)
        decision = f"champion ({why})"
    return describe(c, name, v) | {"decision": decision}


def _gate(c, name: str, v: str, champ: str | None, *, metric: str, value: float, mode: str, val_data_md5: str,
          rescore: Callable[[Any], float], floor: tuple[str, float] | None, min_delta: float) -> tuple[bool, str]:
    """Whether the automatic gate would crown version `v`, and why (or why not)."""
    if floor is not None and not better(value, floor[1], mode):
        return False, (f"challenger, not crowned: {metric} {value:.4f} does not beat the {floor[0]} baseline "
                       f"({floor[1]:.4f}) on the same val data (`approve` or `promote` can still crown it by hand)")
    if champ is None:
        return True, f"first version: {metric}={value:.4f}"
    if champ == v:
        return True, "already champion"
    cv = c.get_model_version(name, champ)
    recorded = cv.tags.get(_metric_tag(metric))
    if recorded is not None and cv.tags.get(VAL_DATA) == val_data_md5:
        champ_value = float(recorded)
    else:
        champ_value = rescore(cv)  # measured on other data: score it on ours
    if better(value, champ_value, mode, min_delta):
        return True, f"{metric} {value:.4f} beats champion v{champ} ({champ_value:.4f})"
    if better(value, champ_value, mode):
        return False, (f"challenger (champion v{champ} holds: {champ_value:.4f}; {value:.4f} is better by "
                       f"{abs(value - champ_value):.4f}, under register.min_delta {min_delta:g})")
    return False, f"challenger (champion v{champ} holds: {champ_value:.4f})"


def describe(c, name: str, version: str) -> dict[str, Any]:
    """One version: aliases, champion, metrics, lineage tags."""
    mv = c.get_model_version(name, version)
    rm = c.get_registered_model(name)
    aliases = sorted(a for a, ver in (rm.aliases or {}).items() if str(ver) == str(version))
    return {
        "name": name, "version": str(mv.version), "aliases": aliases,
        "champion_version": alias_version(c, name, CHAMPION),
        "run_id": mv.run_id, "source": mv.source, "status": mv.status,
        "tags": dict(sorted(mv.tags.items())),
    }


def list_versions(c, name: str) -> list[dict[str, Any]]:
    """Every version of a model, newest first."""
    versions = sorted(c.search_model_versions(f"name = '{name}'"), key=lambda m: -int(m.version))
    return [describe(c, name, m.version) for m in versions]


def promote(c, name: str, version: str, why: str, who: str | None = None) -> dict[str, Any]:
    """Make `version` champion by hand (an archived version cannot be)."""
    mv = c.get_model_version(name, version)  # fails clearly if it does not exist
    if ARCHIVED in mv.tags:
        raise ValueError(f"{name} v{version} is archived ({json.loads(mv.tags[ARCHIVED])['why']}): "
                         "not promotable")
    set_champion(c, name, str(version), who or user(), why)
    return describe(c, name, str(version))


def user() -> str:
    """Who acts: the server login (MLFLOW_TRACKING_USERNAME) where there is one, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def verdict(tags: dict[str, str]) -> dict[str, str] | None:
    """A version's recorded verdict ({verdict, who, why, at}), or None."""
    raw = tags.get(VERDICT)
    return json.loads(raw) if raw else None


def _need_reason(what: str, why: str) -> None:
    if not why.strip():
        raise ValueError(f"{what[:-1]} needs a reason: --reason '...' is recorded with the verdict")


def _record_verdict(c, name: str, version: str, what: str, why: str, who: str) -> None:
    _need_reason(what, why)
    at = _now()
    c.set_model_version_tag(name, version, VERDICT, json.dumps({"verdict": what, "who": who, "why": why, "at": at}))
    desc = c.get_model_version(name, version).description or ""
    if desc.startswith("# Review:"):  # `review` set it: its verdict line follows the decision
        line = f"- verdict: {what} by {who} at {at}: {why}"
        c.update_model_version(name, version, description=re.sub(r"^- verdict: .*$", lambda _: line, desc,
                                                                 count=1, flags=re.M))


def approve(c, name: str, version: str, why: str, who: str | None = None) -> dict[str, Any]:
    """A person's yes: `version` becomes champion, and who, when and why are recorded on it. On a
    server with the champion guard, only a promoter's login gets past the alias change; the
    verdict is recorded only once the crown has moved."""
    mv = c.get_model_version(name, str(version))
    if ARCHIVED in mv.tags:
        raise ValueError(f"{name} v{version} is archived ({json.loads(mv.tags[ARCHIVED])['why']}): not approvable")
    who = who or user()
    _need_reason("approved", why)  # before the crown moves
    set_champion(c, name, str(version), who, why)
    _record_verdict(c, name, str(version), "approved", why, who)
    return describe(c, name, str(version))


def reject(c, name: str, version: str, why: str, who: str | None = None) -> dict[str, Any]:
    """A person's no: recorded on the version (it stays registered and traceable, and `review`
    moves on to the next version without a verdict). The champion cannot be rejected: roll back
    or approve another first."""
    version = str(version)
    c.get_model_version(name, version)
    if alias_version(c, name, CHAMPION) == version:
        raise ValueError(f"{name} v{version} is the champion: approve another version or roll back first")
    _record_verdict(c, name, version, "rejected", why, who or user())
    return describe(c, name, version)


def replaced(c, name: str, version: str) -> str | None:
    """The champion `version` took the crown from (its entry before `version`'s last one in the
    champion history), or None."""
    hist = _history(c, name)
    if str(version) not in hist:
        return None
    i = len(hist) - 1 - hist[::-1].index(str(version))
    return hist[i - 1] if i > 0 else None


def awaiting(c, name: str) -> str | None:
    """The newest version with no verdict recorded that is not archived (a champion the gate crowned
    included: nobody has said yes to it yet), or None."""
    for v in sorted(c.search_model_versions(f"name = '{name}'"), key=lambda m: -int(m.version)):
        if VERDICT not in v.tags and ARCHIVED not in v.tags:
            return str(v.version)
    return None


def rollback(c, name: str, why: str, who: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the version that held it before the current one."""
    archived = {str(m.version) for m in c.search_model_versions(f"name = '{name}'") if ARCHIVED in m.tags}
    seen: dict[str, str | None] = {}

    def plan(current: str | None, hist: list[str]) -> tuple[str, list[str]]:
        hist = list(hist)
        while hist and (hist[-1] == current or hist[-1] in archived):
            hist.pop()
        if not hist:
            raise ValueError(f"{name}: no earlier champion to roll back to")
        seen["current"] = current
        return hist[-1], hist

    with champion_lock(c, name, history_tag=HISTORY) as gate:
        previous, _ = decide(gate, plan, who="rollback")
    current = seen["current"]
    c.set_model_version_tag(name, previous, "trainyard.rolled_back_by", who or user())
    c.set_model_version_tag(name, previous, "trainyard.rolled_back_reason", why)
    c.set_model_version_tag(name, previous, "trainyard.rolled_back_at", _now())
    if current:
        c.set_model_version_tag(name, current, "trainyard.demoted", json.dumps({"why": why, "at": _now()}))
    return describe(c, name, str(previous))


def archive(c, name: str, version: str, why: str, who: str | None = None) -> dict[str, Any]:
    """Retire a version: tag it archived (who, why, when) and take its aliases away. The
    champion cannot be archived (promote another or roll back first); its files and lineage
    stay, so `trace` still finds it and a review can see why it went."""
    version = str(version)
    c.get_model_version(name, version)
    if alias_version(c, name, CHAMPION) == version:
        raise ValueError(f"{name} v{version} is the champion: promote another version or roll back first")
    for alias, ver in (c.get_registered_model(name).aliases or {}).items():
        if str(ver) == version:
            c.delete_registered_model_alias(name, alias)
    c.set_model_version_tag(name, version, ARCHIVED,
                            json.dumps({"who": who or user(), "why": why, "at": _now()}))
    return describe(c, name, version)


def data_digests(tags: dict[str, str]) -> dict[str, str]:
    """A version's data files and their md5s, from its lineage tags."""
    return {k.removeprefix(DATA_TAG): v for k, v in tags.items() if k.startswith(DATA_TAG)}


BASE_MD5_TAG = "trainyard.base.model_md5"  # a fine-tuned model's base model file (its registry tag too)


def base_version(c, base_name: str, model_md5: str) -> str | None:
    """The version of `base_name` whose model file has this md5 (newest first), or None when
    that file was never registered."""
    for v in list_versions(c, base_name):
        if v["tags"].get("trainyard.model_md5") == model_md5:
            return v["version"]
    return None


def built_on(c, name: str, base_name: str, base_version_: str) -> list[dict[str, Any]]:
    """The versions of `name` fine-tuned from version `base_version_` of `base_name` (from its
    model file, matched by md5: a base file registered twice is one file), newest first."""
    base = c.get_model_version(base_name, base_version_)  # fails clearly if it does not exist
    md5 = base.tags.get("trainyard.model_md5")
    if not md5:
        raise ValueError(f"{base_name} v{base_version_} has no trainyard.model_md5 tag: not registered by this pipeline")
    return [v for v in list_versions(c, name) if v["tags"].get(BASE_MD5_TAG) == md5]


def trace(c, name: str, *, md5: str | None = None, commit: str | None = None) -> list[dict[str, Any]]:
    """The versions built from data with this md5 (any of its data files; a prefix of at least
    6 characters will do) or from this git commit (a prefix too), newest first."""
    if not md5 and not commit:
        raise ValueError("trace needs a data md5 or a commit")
    for label, value in (("md5", md5), ("commit", commit)):
        if value is not None and len(value) < 6:
            raise ValueError(f"{label} '{value}' is too short to be unambiguous: give at least 6 characters")
    out = []
    for v in list_versions(c, name):
        tags = v["tags"]
        if md5 and not any(d.startswith(md5) for d in data_digests(tags).values()):
            continue
        if commit and not tags.get(COMMIT_TAG, "").startswith(commit):
            continue
        out.append(v)
    return out
