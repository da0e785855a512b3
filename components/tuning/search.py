"""A sweep's search: params.yaml's dimensions as Tune sampling, the grid's points in a seeded
order, the search algorithm of each round, and the rounds a sweep has run."""

from __future__ import annotations

import json
import pickletools
import re
import time
from typing import Any

from components.config import SearchDim, TuneParams


def search_space(space: dict[str, SearchDim]) -> dict[str, Any]:
    """params.yaml search dimensions -> Ray Tune sampling objects."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type in ("choice", "grid"):  # grid points are fed in by `grid_points`
            out[key] = tune.choice(list(dim.values))
        elif dim.type == "uniform":
            out[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "loguniform":
            out[key] = tune.loguniform(dim.low, dim.high)
        else:
            out[key] = tune.randint(int(dim.low), int(dim.high))
    return out


def rounds(storage: str, name: str) -> list[str]:
    """The sweep's Tune experiments in order: `name`, then `name-r2`, ... one per raise of
    `num_samples` (a Tune experiment's trial count is fixed once it starts). A round whose
    state does not load is set aside with every later one (`damaged_round`): those rounds
    run again."""
    from ray import tune

    from components.store import set_aside

    found: list[str] = []

    def nth(i: int) -> str:
        return name if i == 0 else f"{name}-r{i + 1}"

    while tune.Tuner.can_restore(f"{storage.rstrip('/')}/{nth(len(found))}"):
        found.append(nth(len(found)))
    for i, round_name in enumerate(found):
        damage = damaged_round(f"{storage.rstrip('/')}/{round_name}")
        if damage:
            stamp = int(time.time())
            for later in found[i:]:
                set_aside(f"{storage.rstrip('/')}/{later}", stamp)
            print(f"[tune] {damage}; round {i + 1}{' and later' if i < len(found) - 1 else ''} set aside "
                  f"(<round>.damaged-{stamp}) and run again", flush=True)
            return found[:i]
    return found


EXPERIMENT_STATE = re.compile(r"experiment_state-.*\.json")


def damaged_round(path: str) -> str | None:
    """What in a Tune experiment's folder does not load, or None when it all does.

    Tune writes its state in place (a full disk or a killed copy cuts it short) and refuses a
    restore on any of it, on every retry. Checked without running any of it: every JSON file
    parses, every pickle's opcode stream is whole. The newest experiment state that does not
    parse is set aside and the next newest used, as Tune keeps one per session."""
    import pyarrow.fs as pafs

    from components.store import set_aside, store_fs

    fs, base = store_fs(path)
    files = [i for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.File]
    states = sorted((i.base_name for i in files if EXPERIMENT_STATE.fullmatch(i.base_name)), reverse=True)
    skipped: list[str] = []
    for info in files:
        with fs.open_input_stream(info.path) as f:
            data = f.read()
        problem = _unreadable(info.base_name, data)
        if problem is None:
            continue
        if info.base_name in states and len(states) > len(skipped) + 1:
            skipped.append(info.base_name)
            set_aside(f"{path.rstrip('/')}/{info.base_name}")
            print(f"[tune] {path}/{problem}; set aside: the sweep resumes from its previous state file", flush=True)
            continue
        return f"{path}/{problem}"
    return None


def _unreadable(name: str, data: bytes) -> str | None:
    """Why a Tune state file does not load, or None. Tune writes JSON and pickles, not always
    under the name that says which (`search_gen_state-*.json` is a pickle): either whole will do."""
    if not name.endswith((".json", ".pkl")):
        return None
    try:
        json.loads(data.decode())
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        as_json = err
    try:
        for _ in pickletools.genops(data):  # reads opcodes only: nothing is imported or run
            pass
        if data.endswith(b"."):
            return None
        as_pickle: Exception = ValueError("cut short")
    except Exception as err:  # ValueError for a cut stream, others for garbage
        as_pickle = err
    why = as_json if data[:1] in (b"{", b"[") or not data else f"{type(as_pickle).__name__}: {as_pickle}"
    return f"{name} does not load ({len(data)} bytes, {why})"


def searcher(tp: TuneParams, concurrent: int, done: list[dict[str, Any]], round_index: int):
    """The search algorithm of a new round, told of the trials earlier rounds finished.

    random: Ray's variant generator (seeded; a later round draws from another seed, so it
    never repeats the first round's points). optuna: TPE, with every earlier trial added to
    its study as evaluated (config and result): nothing is run twice.
    """
    if tp.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        known = [t for t in done if t[tp.metric] is not None]
        alg = OptunaSearch(space=OptunaSearch.convert_search_space(search_space(tp.space)), metric=tp.metric,
                           mode=tp.mode, seed=tp.seed,
                           points_to_evaluate=[{k: t["config"][k] for k in tp.space} for t in known] or None,
                           evaluated_rewards=[t[tp.metric] for t in known] or None)
        return ConcurrencyLimiter(alg, max_concurrent=concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # The concurrency limit must live in the generator: Tune ignores max_concurrent_trials
    # when a BasicVariantGenerator is passed.
    return BasicVariantGenerator(points_to_evaluate=grid_points(tp)[len(done):] or None,
                                 random_state=tp.seed + 7919 * round_index, max_concurrent=concurrent)


def grid_points(tp: TuneParams) -> list[dict[str, Any]]:
    """Every point of the `grid` dimensions (each `num_samples` times), in an order shuffled by
    `tune.seed`: run in the grid's own order, ASHA would meet, say, every low lr first, keep them
    (nothing better is known yet) and stop nothing. Other dimensions are drawn per trial."""
    import itertools
    import random

    grid = {k: d.values for k, d in tp.space.items() if d.type == "grid"}
    if not grid:
        return []
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    points = points * tp.num_samples
    random.Random(tp.seed).shuffle(points)
    return points


def planned(tp: TuneParams) -> int:
    """Trials the sweep runs in all: `num_samples`, times the grid's size when it has one."""
    return len(grid_points(tp)) or tp.num_samples
