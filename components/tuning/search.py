"""A sweep's search: params.yaml's dimensions as Tune sampling, the grid's points in a seeded
order, the search algorithm of each round, and the rounds a sweep has run."""

from __future__ import annotations

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
    `num_samples` (a Tune experiment's trial count is fixed once it starts)."""
    from ray import tune

    found = []
    while tune.Tuner.can_restore(f"{storage.rstrip('/')}/{name if not found else f'{name}-r{len(found) + 1}'}"):
        found.append(name if not found else f"{name}-r{len(found) + 1}")
    return found


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
