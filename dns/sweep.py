"""Sweeps over Hydra's public interfaces: the jobs a command line asks for (checked before any of them runs),
the torch threads of a job under a launcher that runs several side by side, the per-layer c an Optuna search
tries, and the value a sweeper optimises.

Grid sweeps (Hydra's basic sweeper) are known in full beforehand: every job is composed and validated. A search
(`hydra/sweeper=dns_optuna`) picks its jobs as it goes: its fixed settings and each end of every searched range
are validated, and its `n_trials` job directories are taken.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

BASIC_SWEEPER = "BasicSweeper"  # the end of the basic sweeper's _target_
C_RANGE = (1.0, 7.0)  # where dns_optuna searches each layer's c unless the command line gives a range
C_STEP = 0.25  # a power of two: the values print as typed (4.25, not 4.300000000000001)


@dataclass
class SweepPlan:
    """What a command line runs: `configs` are the override lists whose configurations must all be valid before
    any work; a grid's are its jobs in order (`grid`), a search's its fixed settings first, then each searched
    value or range end in turn. `jobs` counts the job directories the sweep uses (numbers 0 to jobs - 1)."""
    configs: list[list[str]]
    jobs: int
    grid: bool


def parse(args: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(args)


def values(override: Override) -> list[str]:
    """`key=value` for each value a sweep override takes (the two ends of a range), or the override itself."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [override.input_line]
    if override.is_discrete_sweep():
        return [f"{key}={v}" for v in override.sweep_string_iterator()]
    interval = override.value()
    return [f"{key}={interval.start}", f"{key}={interval.end}"]


def by_key(overrides: list[Override]) -> dict[str, list[str]]:
    """The values of each key, a key given twice taking its last values at its first place (as Hydra does)."""
    keyed: dict[str, list[str]] = {}
    for override in overrides:
        keyed[override.get_key_element()] = values(override)
    return keyed


def base_overrides(args: list[str]) -> list[str]:
    """`args` with each sweep at its first value: a configuration that composes, to read the sweep's settings."""
    return [vals[0] for vals in by_key(parse(args)).values()]


def grid_jobs(args: list[str]) -> list[list[str]]:
    """The override lists of a grid sweep's jobs, in Hydra's order: the product of every key's values."""
    keyed = by_key(parse(args))
    interval = next((o for o in parse(args) if o.is_sweep_override() and not o.is_discrete_sweep()), None)
    if interval is not None:
        raise ValueError(f"{interval.input_line}: a grid sweep takes lists of values (a,b,c or range(...)); a range "
                         f"is searched by hydra/sweeper=dns_optuna")
    return [list(job) for job in itertools.product(*keyed.values())]


def search_configs(args: list[str]) -> list[list[str]]:
    """The fixed settings of a search, then the same with each searched key at each of its values or ends."""
    keyed = by_key(parse(args))
    base = [vals[0] for vals in keyed.values()]
    configs = [base]
    for i, vals in enumerate(keyed.values()):
        configs += [base[:i] + [value] + base[i + 1:] for value in vals[1:]]
    return configs


def plan(args: list[str], sweeper: Mapping[str, Any] | None) -> SweepPlan:
    """The jobs of `args` (without -m) under `sweeper` (hydra.sweeper of the composed configuration; None for a
    single run). The sweeper's own `params` come before the command line's, as in Hydra's sweepers."""
    if sweeper is None:
        return SweepPlan([args], 1, grid=True)
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    if str(sweeper.get("_target_", "")).endswith(BASIC_SWEEPER):
        jobs = grid_jobs(params + args)
        return SweepPlan(jobs, len(jobs), grid=True)
    return SweepPlan(search_configs(params + args), int(sweeper.get("n_trials") or 0), grid=False)


def cores() -> int:
    """The CPUs this process may run on (its affinity, which containers and SLURM narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def job_threads(launcher: Mapping[str, Any], cpus: int) -> int | None:
    """The torch threads of one job under `launcher` (hydra.launcher), or None for torch's own default.

    joblib runs n_jobs jobs side by side on this machine: they share its cores. submitit gives each job
    cpus_per_task when set (SLURM allocates them; submitit_local runs every job at once, so set it there)."""
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n_jobs = int(launcher.get("n_jobs") or -1)
        parallel = n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)  # joblib's -1 = every core, -2 = all but one
        return max(1, cpus // parallel)
    if "submitit" in target.lower() and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None


def objective(report: Mapping[str, Any], directions: Any) -> float | tuple[float, float]:
    """What dns-train returns to a sweeper: the final test error (a fraction), or, to a study of two directions (dns_optuna:
    minimize, maximize), the error and the compression."""
    error = float(report["test"]["final_error"])
    if directions is not None and not isinstance(directions, str) and len(directions) == 2:
        return error, float(report["total"]["compression"] or 0.0)
    return error


def searched_layers(run) -> list[str]:
    """The layers whose c dns_optuna searches: every layer the run operates on (a RunConfig)."""
    import torch

    from dns.config import model_args
    from dns.models import get_model, layer_kind, prunable_layers
    from dns.surgeon import surgery_phases

    with torch.device("meta"):
        model = get_model(run.model.name, **model_args(run))
    kinds = {name: layer_kind(layer) for name, layer in prunable_layers(model).items()}
    layers = [name for phase in surgery_phases(run, kinds) for name in phase.c]
    dotted = [name for name in layers if "." in name]
    if dotted:  # an override key cannot hold a dot of its own
        raise ValueError(f"dns_optuna searches c layer by layer, but {run.model.name}'s layers have dotted names "
                         f"({dotted[0]}): search surgery.c=interval(LOW,HIGH) instead")
    return layers


def c_per_layer_space(cfg: Any, trial: Any) -> None:
    """dns_optuna's search space (its custom_search_space): the c of every layer the run operates on, in C_RANGE,
    unless the command line searches surgery.c or surgery.c_per_layer itself. Optuna calls it for each trial."""
    from omegaconf import OmegaConf, open_dict

    given = {key.lstrip("+") for key in [*trial.params, *trial.user_attrs]}
    if "surgery.c" in given:
        return
    job = cfg.copy()  # the sweep's configuration, its schema kept, without Hydra's settings
    with open_dict(job):
        job.pop("hydra", None)
    for name in searched_layers(OmegaConf.to_object(job)):  # dns-train validated it before the study began
        if f"surgery.c_per_layer.{name}" not in given:
            trial.suggest_float(f"surgery.c_per_layer.{name}", *C_RANGE, step=C_STEP)
