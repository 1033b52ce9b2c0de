"""Running a sweep's points (docs/llm.md 4.4): each point is one `plan_llm` call in a worker, its plan flattened to
one row of scalars; the rows come back in point order whatever ran them.

Executors: this process (`workers=1`), a local process pool (the default, one worker per core), or a Ray cluster
(`ray_address`: an address, or "local" for a cluster of this machine started for the sweep). Ray is an optional
extra, imported only then. Workers share the pieces through the disk cache (llm/piece_cache.py); without one,
every point compiles its own.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from tqdm import tqdm

from lpusim.errors import LpusimError
from lpusim.llm.piece_cache import PieceCache
from lpusim.llm.plan import plan_llm
from lpusim.sweep.spec import ASKED, SweepSpec

RAY_MISSING = "--ray needs Ray, an optional extra: pip install 'lpusim[ray]'"
# Columns that say how a point ran, not what it found: they differ between runs, caches and executors.
RUN_COLUMNS = ("wall_s", "compile_s", "cache_hits", "cache_misses")
ECHOED = ("model", "precision", "context", "concurrency", "prompt", "new_tokens")  # the row's inputs say these


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted names (`cycle_breakdown.compute`, `energy.j_per_token`), lists as compact JSON."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = prefix + key
        if isinstance(item, dict):
            out.update(flatten(item, name + "."))
        elif isinstance(item, (list, tuple)):
            out[name] = json.dumps(item, separators=(",", ":"))
        else:
            out[name] = item
    return out


def plan_row(result: dict[str, Any]) -> dict[str, Any]:
    """A plan's columns: every scalar field, whatever the plan holds; its pieces as a count."""
    result = dict(result)
    result["pieces"] = len(result.get("pieces", ()))
    return {k: v for k, v in flatten(result).items() if k not in ECHOED}


def run_point(point: dict[str, Any], config: Any, chip: Any, cache_dir: str | None) -> dict[str, Any]:
    """One point's row: its inputs, `error` (empty, or why the planner rejected it), the plan's columns, and how
    it ran (`RUN_COLUMNS`)."""
    start = time.perf_counter()
    # int8 parts are quantised with onnxruntime, whose warnings (unused initializers) would bury the progress bar
    import onnxruntime
    onnxruntime.set_default_logger_severity(3)
    store = PieceCache(cache_dir) if cache_dir else None
    ask = {axis: None if point[name] == "auto" else point[name] for axis, name in ASKED.items()}
    row = dict(point, error="")
    try:
        result = plan_llm(config, chips=point["chips_asked"], tp=ask["tp"], pp=ask["pp"],
                          precision=point["precision"], context=point["context"], prompt=point["prompt"],
                          new_tokens=point["new_tokens"], concurrency=point["concurrency"],
                          prefill_chunk=ask["prefill_chunk"], chip=chip, store=store)
    except LpusimError as e:
        row["error"] = str(e) or type(e).__name__
    else:
        row.update(plan_row(result))
    row["wall_s"] = round(time.perf_counter() - start, 3)
    row["cache_hits"] = store.hits if store else 0
    row["cache_misses"] = store.misses if store else 0
    return row


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(spec: SweepSpec, *, workers: int | None = None, ray_address: str | None = None,
              cache_dir: str | os.PathLike | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Every point of `spec`, one row each in point order. `cache_dir` None: no disk cache."""
    points = spec.points()
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    tasks = [(p, spec.configs[p["model"]], spec.chip, cache) for p in points]
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise LpusimError(f"--workers {workers}: at least 1")
    with tqdm(total=len(tasks), desc="lpusim sweep", unit="point", file=sys.stderr, disable=not progress) as bar:
        if ray_address is not None:
            return _on_ray(tasks, ray_address, workers, bar.update)
        if workers == 1 or len(tasks) == 1:
            rows = []
            for task in tasks:
                rows.append(run_point(*task))
                bar.update()
            return rows
        return _on_pool(tasks, min(workers, len(tasks)), bar.update)


def _on_pool(tasks: Sequence[tuple], workers: int, done: Callable[[int], Any]) -> list[dict[str, Any]]:
    rows: list[Any] = [None] * len(tasks)
    # spawn, not fork: a fresh interpreter per worker, as on Ray (no inherited threads, locks or extension state)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_point, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            done(1)
    return rows


def _on_ray(tasks: Sequence[tuple], address: str, workers: int, done: Callable[[int], Any]) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise LpusimError(RAY_MISSING) from None
    started = not ray.is_initialized()  # else the caller's cluster (a test's `ray.init()`): used, left running
    if started:
        local = address == "local"  # a cluster of this machine, for this sweep: as many CPUs as --workers
        try:
            ray.init(address=None if local else address, num_cpus=workers if local else None,
                     include_dashboard=False if local else None, log_to_driver=False, logging_level="error")
        except Exception as e:  # Ray's own errors (no cluster there, a version mismatch) have no common base
            raise LpusimError(f"--ray {address}: {type(e).__name__}: {e}") from None
    try:
        remote = ray.remote(run_point)
        refs = [remote.remote(*task) for task in tasks]
        pending = list(refs)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            done(len(finished))
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()
