"""Review the model registry from the command line.

    python -m components.cli.registry list                       # versions, metrics, aliases, lineage
    python -m components.cli.registry show 3
    python -m components.cli.registry review                     # the newest version awaiting a verdict beside the champion
    python -m components.cli.registry approve 4 --reason "samples read well; val 1.52 < 1.56"
    python -m components.cli.registry reject 5 --reason "trained on the corpus with the bad encoding"
    python -m components.cli.registry hook https://deploy.example/hooks/champion --secret-env DEPLOY_HOOK_SECRET
    python -m components.cli.registry promote 3 --why "better samples, checked by hand"
    python -m components.cli.registry rollback --why "v4 regressed on the new prompts"
    python -m components.cli.registry archive 2 --why "trained on the corpus with the bad encoding"
    python -m components.cli.registry trace --data data/char_lm/normalized/train --rev HEAD~3
    python -m components.cli.registry trace --md5 3f2a9c      # versions built from this data digest
    python -m components.cli.registry trace --commit 1a2b3c4  # versions built at this git commit
    python -m components.cli.registry trace --version 3       # and back: its commit, data, run

The model name comes from `<workload>.register.model_name` in params.yaml (or `--name`).
Approvals, rejections, promotions, rollbacks and archiving record who (the server login, else
the OS user), when and why as version tags; the MLflow UI shows the same. `review` writes
reviews/<model>/vN.md, logs it to the challenger's run and sets it as the version's description.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml

from components.cli.entry import main, params
from components.tracking import registry, review
from components.tracking.session import connect


def _row(v: dict) -> str:
    t = v["tags"]
    metric = t.get("trainyard.metric_name", "")
    value = t.get(f"trainyard.metric.{metric}", "")
    value = f"{float(value):.4f}" if value else "-"
    aliases = ",".join(v["aliases"]) or ("archived" if registry.ARCHIVED in t else "-")
    return (f"v{v['version']:<4} {aliases:<20} {metric}={value:<8} "
            f"arch={t.get('trainyard.arch', '-'):<5} commit={t.get(registry.COMMIT_TAG, '-')[:12]:<12} "
            f"run={v['run_id'] or '-'}")


def lock_digests(path: str, rev: str | None) -> dict[str, str]:
    """md5 of `path` in dvc.lock (at git `rev`, else the workspace's): the file or folder itself
    (a folder's `.dir` digest), or every file under it; {} when dvc.lock does not name it."""
    if rev is None:
        text = Path("dvc.lock").read_text()
    else:
        p = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True)
        if p.returncode != 0:
            raise ValueError(f"no dvc.lock at {rev}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
        text = p.stdout
    want = path.rstrip("/")
    out = {}
    for stage in (yaml.safe_load(text) or {}).get("stages", {}).values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            p_ = entry.get("path", "")
            # the path itself (a split folder's `.dir` digest too: versions are tagged with it), or
            # the files under a folder that is no dep of its own
            if "md5" in entry and (p_ == want or (p_.startswith(want + "/") and not entry["md5"].endswith(".dir"))):
                out[p_] = entry["md5"]
    return out


def _trace(c, name: str, args: argparse.Namespace) -> None:
    if args.version:
        v = registry.describe(c, name, args.version)
        t = v["tags"]
        print(f"{name} v{v['version']}: commit {t.get(registry.COMMIT_TAG, '-')}, training run {v['run_id']}, "
              f"model md5 {t.get('trainyard.model_md5', '-')}")
        for path, md5 in sorted(registry.data_digests(t).items()):
            print(f"  data {path}  md5 {md5}")
        if exp := t.get("trainyard.dvc_exp_name"):
            print(f"  dvc experiment {exp} (baseline {t.get('trainyard.dvc_exp_baseline', '-')[:12]})")
        if base := t.get(registry.BASE_MD5_TAG):
            print(f"  fine-tuned from {t.get('trainyard.base.file', '-')} (md5 {base}), "
                  f"registered as {t.get('trainyard.base.version', 'no version')}")
        return
    if args.built_on:
        base, _, version = args.built_on.rpartition(":")
        if not base or not version.isdigit():
            raise ValueError(f"--built-on {args.built_on!r}: expected MODEL:VERSION, e.g. char-lm:3")
        versions = registry.built_on(c, name, base, version)
        print(f"{name}: {len(versions)} version(s) fine-tuned from {base} v{version}")
        for v in versions:
            print(_row(v))
        return
    if args.data:
        digests = lock_digests(args.data, args.rev)
        if not digests:
            raise ValueError(f"dvc.lock{' at ' + args.rev if args.rev else ''} has no md5 for {args.data}")
        found = {v["version"]: v for md5 in digests.values() for v in registry.trace(c, name, md5=md5)}
        what = f"{args.data}{' at ' + args.rev if args.rev else ''} ({', '.join(sorted(set(digests.values())))[:80]})"
        versions = sorted(found.values(), key=lambda v: -int(v["version"]))
    else:
        versions = registry.trace(c, name, md5=args.md5, commit=args.commit)
        what = f"md5 {args.md5}" if args.md5 else f"commit {args.commit}"
    print(f"{name}: {len(versions)} version(s) built from {what}")
    for v in versions:
        print(_row(v))


def _review(c, name: str, args: argparse.Namespace) -> None:
    reg = getattr(params(args), args.workload).register_
    new, champ = review.gather(c, name, args.version)
    text = review.render(name, new, champ, metric=reg.metric, mode=reg.mode, min_delta=reg.min_delta)
    out = review.publish(c, name, new, text, Path(args.out or f"reviews/{name}/v{new.version}.md"))
    print(text)
    print(f"[review] -> {out}, and v{new.version}'s description and run (review/v{new.version}.md) in MLflow")


def _hook(c, name: str, args: argparse.Namespace) -> None:
    import os

    secret = os.environ.get(args.secret_env)
    if not secret:
        raise ValueError(f"--secret-env {args.secret_env}: that variable is not set (the receiver checks "
                         "each delivery's signature with the same secret)")
    hook = c.create_webhook(name=f"{name}-champion", url=args.url, secret=secret,
                            events=["model_version_alias.created", "model_version_alias.deleted"],
                            description=f"alias changes of {name}; the receiver acts on `champion` only")
    print(f"webhook {hook.webhook_id}: {args.url} hears alias changes of {name} (signed with ${args.secret_env})")


def run(args: argparse.Namespace) -> None:
    name = args.name or getattr(params(args), args.workload).register_.model_name
    c = connect(args.tracking_uri).client
    if args.cmd == "review":
        return _review(c, name, args)
    if args.cmd == "hook":
        return _hook(c, name, args)
    if args.cmd in ("approve", "reject"):
        v = (registry.approve if args.cmd == "approve" else registry.reject)(c, name, args.version, args.reason,
                                                                             args.who)
        verdict = registry.verdict(v["tags"])
        print(f"{name} v{v['version']}: {verdict['verdict']} by {verdict['who']} ({args.reason}); "
              f"champion v{v['champion_version']}")
        return None
    if args.cmd == "list":
        versions = registry.list_versions(c, name)
        if not versions:
            print(f"{name}: no versions registered yet")
        print(f"{name} ({len(versions)} versions, champion v{registry.alias_version(c, name, registry.CHAMPION)})")
        for v in versions:
            print(_row(v))
    elif args.cmd == "show":
        print(json.dumps(registry.describe(c, name, args.version), indent=2))
    elif args.cmd == "promote":
        v = registry.promote(c, name, args.version, args.why, args.who)
        print(f"{name}: champion -> v{v['version']} ({args.why})")
    elif args.cmd == "rollback":
        v = registry.rollback(c, name, args.why, args.who)
        print(f"{name}: champion rolled back to v{v['version']} ({args.why})")
    elif args.cmd == "archive":
        v = registry.archive(c, name, args.version, args.why, args.who)
        print(f"{name}: v{v['version']} archived ({args.why})")
    elif args.cmd == "trace":
        _trace(c, name, args)


def _args(a: argparse.ArgumentParser) -> None:
    a.add_argument("--name", help="registered model name (default: from params.yaml)")
    sub = a.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="versions with metrics, aliases and lineage")
    sub.add_parser("show", help="one version, all tags").add_argument("version")
    rv = sub.add_parser("review", help="a challenger beside the champion: metrics, gate, data, code, params, samples")
    rv.add_argument("version", nargs="?", help="default: the newest version awaiting a verdict")
    rv.add_argument("--out", help="the Markdown report (default: reviews/<model>/v<N>.md)")
    for verb, what in (("approve", "make a version champion, recording who, when and why"),
                       ("reject", "record a no: who, when and why; review moves on")):
        d = sub.add_parser(verb, help=what)
        d.add_argument("version")
        d.add_argument("--reason", required=True, help="why, recorded with the verdict")
        d.add_argument("--who", help="recorded with the verdict (default: the server login, else the OS user)")
    hk = sub.add_parser("hook", help="an MLflow webhook: POST to URL, signed, when an alias of the model changes")
    hk.add_argument("url")
    hk.add_argument("--secret-env", default="TRAINYARD_HOOK_SECRET",
                    help="the variable holding the signing secret (default: TRAINYARD_HOOK_SECRET)")
    pr = sub.add_parser("promote", help="make a version champion")
    pr.add_argument("version")
    rb = sub.add_parser("rollback", help="give champion back to the previous holder")
    ar = sub.add_parser("archive", help="retire a version: aliases removed, tagged with who and why")
    ar.add_argument("version")
    for s in (pr, rb, ar):
        s.add_argument("--why", required=True, help="reason, recorded as a tag")
        s.add_argument("--who", help="recorded as a tag (default: the current user)")
    tr = sub.add_parser("trace", help="versions built from some data or commit, or a version's origins")
    how = tr.add_mutually_exclusive_group(required=True)
    how.add_argument("--md5", help="a data file's md5 (as in dvc.lock; 6+ characters)")
    how.add_argument("--data", help="a data path as dvc.lock names it (a file, or a folder: every file under it)")
    how.add_argument("--commit", help="a git commit (6+ characters)")
    how.add_argument("--version", help="a version: its commit, data files and md5s, training run")
    how.add_argument("--built-on", metavar="MODEL:VERSION",
                     help="the versions fine-tuned from that version of another model (e.g. char-lm:3)")
    tr.add_argument("--rev", help="with --data: read dvc.lock at this git revision (default: the workspace's)")


if __name__ == "__main__":
    main(run, __doc__, _args)
