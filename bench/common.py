"""Timing helpers shared by the bench/ scripts: interleaved rounds, medians of ratios, markdown tables, environment.

Why interleave: on a shared machine the speed drifts over minutes (other jobs, thermal and frequency changes). Timing
every implementation once per round, in a rotating order, exposes all of them to the same drift; the median over
rounds of the per-round ratio then cancels most of it, which a ratio of two separately measured medians does not.
"""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata


def interleaved_rounds(
    runners: dict[str, Callable[[], object]], rounds: int, iters: int = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """
    Time every runner `iters` times per round, for `rounds` rounds, after `warmup` untimed calls each.

    Round r starts at the r-th runner (rotating order), so no runner is always first or always last. Returns, for each
    runner, one value per round: the mean seconds per call within that round.
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    seconds = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(iters):
                runners[name]()
            seconds[name].append((time.perf_counter() - start) / iters)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def speed_ratios(seconds: Sequence[float], peer_seconds: Sequence[float]) -> list[float]:
    """Per-round speed ratio (peer time / own time): > 1 means faster than the peer in that round."""
    return [p / s for s, p in zip(seconds, peer_seconds)]


def ratio_cell(seconds: Sequence[float], peer_seconds: Sequence[float], digits: int = 3) -> str:
    """The per-round speed ratios (`speed_ratios`) as a table cell: "median x (min-max)"."""
    ratios = speed_ratios(seconds, peer_seconds)
    return f"{median(ratios):.{digits}f}x ({min(ratios):.{digits}f}-{max(ratios):.{digits}f})"


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: the relative width of the rounds' range."""
    return (max(values) - min(values)) / median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are converted with str()."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in cells)])


def cpu_model() -> str:
    """The CPU's model name (hf_vit's own reading, as recorded in a run's eval_results.json)."""
    from hf_vit.training.run import cpu_model as read_cpu_model

    return read_cpu_model()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")


def environment(packages: Sequence[str] = ()) -> dict:
    """Python, CPU, torch threads and the versions of `packages` (None when not installed)."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # Thread settings change the numbers a lot on a shared machine (see bench/README.md).
        **{var: os.environ[var] for var in THREAD_VARIABLES if var in os.environ},
        **{name: package_version(name) for name in packages},
    }


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
