"""What a `dvc repro` costs beyond its work, stage by stage.

    python bench/stage_overhead.py                   # the tiny project, from clean, then one key changed
    python bench/stage_overhead.py --keep /tmp/proj  # leave the project there to look at

Copies the repository to a temporary folder with the tiny params the end-to-end tests use
(every workload, every stage), runs `dvc repro` from clean, then again after one params key
(`--change`, default `image_classifier.train.epochs` one lower: a 2-worker Ray Train run, its
evaluate and register). Each stage appends its own account to a timings file
(`components/timings.py`: when its process started and ended, the seconds of its work:
training and scoring by its own clocks, data read and written). The rest is fixed cost:
process start and imports, Ray start and stop, worker groups, DVC's hashing and locking.

The last line is JSON: `repro_s` (both repros), `work_s`, `fixed_s` (= repro_s - work_s),
`per_stage` (wall and work per stage and run), `ray_starts` (local Ray instances started),
`train_2w_fixed_s` (a 2-worker Train run's `fit` wall minus its epochs), `register_s` (the
mean wall of a register stage), and `runs` (the same per run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.conftest import make_project, merged, project_env, run, tiny_params  # noqa: E402


def _set(params: dict, dotted: str, value) -> dict:
    *head, last = dotted.split(".")
    over: dict = {last: value}
    for k in reversed(head):
        over = {k: over}
    return merged(params, over)


def _get(params: dict, dotted: str):
    for k in dotted.split("."):
        params = params[k]
    return params


def repro(project: Path, timings: Path, ray_idle_s: float) -> tuple[float, list[dict]]:
    """`dvc repro` in `project`; its wall seconds and the stages' timing lines."""
    timings.unlink(missing_ok=True)
    env = project_env() | {"TRAINYARD_TIMINGS": str(timings), "TRAINYARD_RAY_IDLE_S": f"{ray_idle_s:g}"}
    t0 = time.perf_counter()
    run(["dvc", "repro"], project, timeout=3600, env=env)
    wall = time.perf_counter() - t0
    lines = [json.loads(s) for s in timings.read_text().splitlines()] if timings.exists() else []
    return wall, lines


def summary(wall: float, lines: list[dict]) -> dict:
    """One repro's figures."""
    per = {s["stage"]: {"wall_s": round(s["end"] - s["start"], 2), "work_s": round(s["work_s"], 2)} for s in lines}
    work = sum(s["work_s"] for s in lines)
    fits = [s for s in lines if "fit_s" in s["notes"] and s["stage"].startswith("train@")]
    train_2w = [s["notes"]["fit_s"] - s["work_s"] for s in fits if "image_classifier" in s["stage"]]
    registers = [v["wall_s"] for k, v in per.items() if k.startswith("register@")]
    return {"repro_s": round(wall, 1), "work_s": round(work, 1), "fixed_s": round(wall - work, 1),
            "stages": len(lines), "stage_wall_s": round(sum(v["wall_s"] for v in per.values()), 1),
            "ray_starts": sum(1 for s in lines if s["ray_started"]),
            "train_2w_fixed_s": round(train_2w[0], 1) if train_2w else None,
            "register_s": round(sum(registers) / len(registers), 1) if registers else None,
            "per_stage": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--change", default="image_classifier.train.epochs",
                    help="the params key changed for the second repro (an int: one lower)")
    ap.add_argument("--keep", type=Path, help="build the project here and leave it")
    ap.add_argument("--ray-idle", type=float, default=60.0,
                    help="TRAINYARD_RAY_IDLE_S for both repros (60: the default; 0: a Ray per stage, as before)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = args.keep or Path(tmp) / "project"
        project.mkdir(parents=True, exist_ok=True)
        params = tiny_params()
        make_project(project, params)
        timings = project / ".trainyard-timings.jsonl"
        runs = {}
        print("[bench] dvc repro from clean ...", flush=True)
        runs["clean"] = summary(*repro(project, timings, args.ray_idle))
        old = _get(params, args.change)
        (project / "params.yaml").write_text(yaml.safe_dump(_set(params, args.change, old - 1), sort_keys=False))
        print(f"[bench] dvc repro after {args.change}: {old} -> {old - 1} ...", flush=True)
        runs["changed"] = summary(*repro(project, timings, args.ray_idle))
    for name, r in runs.items():
        print(f"[bench] {name}: {r['repro_s']:.0f} s for {r['stages']} stages, work {r['work_s']:.0f} s, "
              f"fixed {r['fixed_s']:.0f} s (stages' own walls {r['stage_wall_s']:.0f} s), Ray started {r['ray_starts']}x")
        for stage, v in r["per_stage"].items():
            print(f"    {stage:28s} wall {v['wall_s']:6.1f} s  work {v['work_s']:6.1f} s")
    both = list(runs.values())
    out = {"repro_s": round(sum(r["repro_s"] for r in both), 1), "work_s": round(sum(r["work_s"] for r in both), 1),
           "fixed_s": round(sum(r["fixed_s"] for r in both), 1),
           "per_stage": {f"{name}:{k}": v for name, r in runs.items() for k, v in r["per_stage"].items()},
           "ray_starts": sum(r["ray_starts"] for r in both),
           "train_2w_fixed_s": next((r["train_2w_fixed_s"] for r in both if r["train_2w_fixed_s"] is not None), None),
           "register_s": runs["clean"]["register_s"], "ray_idle_s": args.ray_idle,
           "runs": {k: {kk: vv for kk, vv in r.items() if kk != "per_stage"} for k, r in runs.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
