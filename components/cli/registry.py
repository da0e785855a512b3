"""Review the model registry from the command line.

    python -m components.cli.registry list                       # versions, metrics, aliases, lineage
    python -m components.cli.registry show 3
    python -m components.cli.registry promote 3 --why "better samples, checked by hand"
    python -m components.cli.registry rollback --why "v4 regressed on the new prompts"

The model name comes from `<workload>.register.model_name` in params.yaml (or `--name`).
Promotions and rollbacks record who and why as version tags; the MLflow UI shows the same.
"""

from __future__ import annotations

import argparse
import json

from components.cli.entry import main, params
from components.tracking import registry
from components.tracking.session import connect


def _row(v: dict) -> str:
    t = v["tags"]
    metric = t.get("trainyard.metric_name", "")
    value = t.get(f"trainyard.metric.{metric}", "")
    value = f"{float(value):.4f}" if value else "-"
    return (f"v{v['version']:<4} {','.join(v['aliases']) or '-':<20} {metric}={value:<8} "
            f"arch={t.get('trainyard.arch', '-'):<5} commit={t.get('trainyard.git_commit', '-')[:12]:<12} "
            f"run={v['run_id'] or '-'}")


def run(args: argparse.Namespace) -> None:
    name = args.name or getattr(params(args), args.workload).register_.model_name
    c = connect(args.tracking_uri).client
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


def _args(a: argparse.ArgumentParser) -> None:
    a.add_argument("--name", help="registered model name (default: from params.yaml)")
    sub = a.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="versions with metrics, aliases and lineage")
    sub.add_parser("show", help="one version, all tags").add_argument("version")
    pr = sub.add_parser("promote", help="make a version champion")
    pr.add_argument("version")
    rb = sub.add_parser("rollback", help="give champion back to the previous holder")
    for s in (pr, rb):
        s.add_argument("--why", required=True, help="reason, recorded as a tag")
        s.add_argument("--who", help="recorded as a tag (default: the current user)")


if __name__ == "__main__":
    main(run, __doc__, _args)
