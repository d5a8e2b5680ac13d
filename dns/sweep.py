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
from dataclasses import dataclass, field
from typing import Any, Mapping

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf, open_dict

BASIC_SWEEPER = "BasicSweeper"  # the end of the basic sweeper's _target_
C_RANGE = (1.0, 7.0)  # where dns_optuna searches each layer's c unless the command line gives a range
C_STEP = 0.25  # a power of two: the values print as typed (4.25, not 4.300000000000001)


@dataclass
class SweepPlan:
    """What a command line runs: `configs` are the override lists whose configurations must all be valid before
    any work; a grid's are its jobs in order (`grid`), a search's its fixed settings first, then each searched
    value or range end in turn. `jobs` counts the job directories the sweep uses (numbers 0 to jobs - 1);
    `searched` names the keys a search draws, `keys` every key the command line sets."""
    configs: list[list[str]]
    jobs: int
    grid: bool
    searched: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


def parse(args: list[str]) -> list[Override]:
    # glob() lists a config group's options through Hydra's config loader: dns-train parses inside
    # initialize_config_module; outside it glob() fails with Hydra's own error
    global_hydra = GlobalHydra.instance()
    loader = global_hydra.config_loader() if global_hydra.is_initialized() else None
    return OverridesParser.create(loader).parse_overrides(args)


def values(override: Override, grid: bool) -> list[str]:
    """`key=value` for each value `override` takes: in a grid the strings Hydra's basic sweeper makes, in a search
    each value of a list and each end of a range or interval (Optuna's ranges hold their stop)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if key.lstrip("+~").startswith("hydra."):
        raise ValueError(f"{override.input_line}: Hydra's own settings take one value in a sweep: run one sweep "
                         f"per value")
    if override.is_discrete_sweep():
        if getattr(override.value(), "shuffle", False):
            raise ValueError(f"{override.input_line}: dns-train numbers and checks a sweep's jobs before they run: "
                             f"give the values in the order wanted instead of shuffle()")
        found = [f"{key}={v}" for v in override.sweep_string_iterator()]
        if not grid and override.is_range_sweep():
            found.append(f"{key}={override.value().stop}")
        return found
    if grid:
        raise ValueError(f"{override.input_line}: a grid sweep takes lists of values (a,b,c or range(...)); a "
                         f"range is searched by hydra/sweeper=dns_optuna")
    interval = override.value()
    return [f"{key}={interval.start}", f"{key}={interval.end}"]


def by_key(args: list[str], grid: bool) -> dict[str, list[str]]:
    """The values of each key, a key given twice taking its last values at its first place (as Hydra does)."""
    keyed: dict[str, list[str]] = {}
    for override in parse(args):
        keyed[override.get_key_element()] = values(override, grid)
    return keyed


def base_overrides(args: list[str]) -> list[str]:
    """`args` with each sweep at its first value: a configuration that composes, to read the sweep's settings."""
    return [vals[0] for vals in by_key(args, grid=False).values()]


def grid_jobs(args: list[str]) -> list[list[str]]:
    """The override lists of a grid sweep's jobs, in Hydra's order: the product of every key's values."""
    return [list(job) for job in itertools.product(*by_key(args, grid=True).values())]


def search_plan(args: list[str], trials: int) -> SweepPlan:
    """A search's fixed settings, then the same with each searched key at each of its other values or ends."""
    keyed = by_key(args, grid=False)
    base = [vals[0] for vals in keyed.values()]
    configs = [base]
    for i, vals in enumerate(keyed.values()):
        configs += [base[:i] + [value] + base[i + 1:] for value in vals[1:]]
    searched = [key.lstrip("+") for key, vals in keyed.items() if len(vals) > 1]  # a key's last values count
    return SweepPlan(configs, trials, grid=False, searched=searched, keys=[key.lstrip("+") for key in keyed])


def plan(args: list[str], sweeper: Mapping[str, Any] | None) -> SweepPlan:
    """The jobs of `args` (without -m) under `sweeper` (hydra.sweeper of the composed configuration; None for a
    single run). The sweeper's own `params` come before the command line's, as in Hydra's sweepers."""
    if sweeper is None:
        return SweepPlan([args], 1, grid=True)
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    if str(sweeper.get("_target_", "")).endswith(BASIC_SWEEPER):
        jobs = grid_jobs(params + args)
        return SweepPlan(jobs, len(jobs), grid=True)
    return search_plan(params + args, int(sweeper.get("n_trials") or 0))


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


def objective(report: Mapping[str, Any], directions: Any) -> float | tuple[float, float] | None:
    """What dns-train returns to a sweeper: the final test error (a fraction), or, to a study of two directions
    (dns_optuna: minimize, maximize), the error and the compression (None if no layer was operated on)."""
    error = float(report["test"]["final_error"])
    if isinstance(directions, (list, tuple)) or OmegaConf.is_list(directions):
        if len(directions) == 2:
            total = report["total"]
            return (error, float(total["compression"] or 0.0)) if total else None
    return error


DNS_SEARCH_SPACE = "dns.sweep.c_per_layer_space"  # dns_optuna's custom_search_space


def drawn_layers(run, searched, given) -> list[str]:
    """The layers whose c dns_optuna draws for `run` (a RunConfig): every layer it operates on, but those whose
    c the command line gives (`given` keys) or searches itself, and none when it searches surgery.c (`searched`)."""
    if "surgery.c" in searched:
        return []
    return [name for name in operated_layers(run) if f"surgery.c_per_layer.{name}" not in given]


def operated_layers(run) -> list[str]:
    """The layers `run` operates on, in order; refused when an override key cannot name them (a dotted name)."""
    import torch

    from dns.config import model_args
    from dns.models import get_model, layer_kind, prunable_layers
    from dns.surgeon import surgery_phases

    with torch.device("meta"):
        model = get_model(run.model.name, **model_args(run))
    kinds = {name: layer_kind(layer) for name, layer in prunable_layers(model).items()}
    layers = [name for phase in surgery_phases(run, kinds) for name in phase.c]
    dotted = [name for name in layers if "." in name]
    if dotted:  # surgery.c_per_layer.layer1.0.conv1=2 would be a nested key
        raise ValueError(f"dns_optuna draws c layer by layer, but {run.model.name}'s layers have dotted names "
                         f"({dotted[0]}): search 'surgery.c=interval(LOW,HIGH)' instead")
    return layers


def check_search_space(runs: list, todo: SweepPlan) -> None:
    """dns_optuna before its study: the layers whose c it draws are the same in every configuration the study can
    reach (the master configuration it draws from holds no searched value), and it has something to search."""
    drawn = [drawn_layers(run, todo.searched, todo.keys) for run in runs]
    if any(layers != drawn[0] for layers in drawn):
        other = next(layers for layers in drawn if layers != drawn[0])
        raise ValueError(f"dns_optuna draws c for the layers of one configuration, but the searched settings change "
                         f"them ({','.join(drawn[0])} against {','.join(other)}): search one network and layer "
                         f"selection at a time, or give the surgery.c_per_layer ranges yourself")
    if not drawn[0] and not todo.searched:
        raise ValueError("dns_optuna has nothing to search: every layer's c is given; give a range, e.g. "
                         "'surgery.c_per_layer.fc1=interval(4,6)'")


def c_per_layer_space(cfg: Any, trial: Any) -> None:
    """dns_optuna's search space (its custom_search_space): `drawn_layers` in C_RANGE. Optuna calls it for each
    trial after drawing the command line's ranges (trial.params); its fixed settings are trial.user_attrs."""
    job = cfg.copy()  # the sweep's configuration, its schema kept, without Hydra's settings
    with open_dict(job):
        job.pop("hydra", None)
    run = OmegaConf.to_object(job)  # dns-train validated it before the study began
    given = {key.lstrip("+") for key in [*trial.params, *trial.user_attrs]}
    for name in drawn_layers(run, {key.lstrip("+") for key in trial.params}, given):
        trial.suggest_float(f"surgery.c_per_layer.{name}", *C_RANGE, step=C_STEP)
