"""`dns-train`: the Hydra app over conf/ (shipped in the package as dns.conf).

Every job's configuration is composed and validated before Hydra creates a run directory, so bad input
ends with one line on stderr, exit status 2, and nothing written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig

from dns.config import ConfigError, register_configs, validate

CONFIG_MODULE = "dns.conf"
USAGE_ERROR = 2
register_configs()


@hydra.main(version_base="1.3", config_path="pkg://dns.conf", config_name="config")
def _train(cfg: DictConfig) -> float:
    from dns.train import run

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    report = run(validate(cfg), out_dir)
    logging.getLogger("dns").info("report: %s", out_dir / "report.json")
    return report["test"]["final_error"]  # the number a sweeper would minimise


def one_line(error: BaseException) -> str:
    """The messages of an exception and its causes on one line."""
    parts = []
    while error is not None:
        first = str(error).strip().splitlines()
        if first and first[0] not in parts:
            parts.append(first[0])
        error = error.__cause__
    return ": ".join(parts)


def job_overrides(args: list[str]) -> list[list[str]] | None:
    """The override lists of the jobs `args` would launch, or None when Hydra is asked something else."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                 "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--resolve",
                 "--package", "-p") or a.startswith("--info=") for a in args):
        return None
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if not ("-m" in args or "--multirun" in args):
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_jobs(args: list[str]) -> None:
    """Compose and validate the configuration of every job `args` would run; raise ConfigError if one is bad."""
    try:
        jobs = job_overrides(args)
    except Exception as e:  # Hydra's override grammar errors
        raise ConfigError(one_line(e)) from None
    if jobs is None:
        return
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for overrides in jobs:
            try:
                validate(compose(config_name="config", overrides=overrides))
            except ConfigError:
                raise
            except MissingConfigException as e:  # model=foo: name the choices (the schemas are not choices)
                group, _, name = (e.missing_cfg_file or "").rpartition("/")
                choices = [o for o in e.options or [] if not o.startswith("base_")]
                raise ConfigError(f"unknown {group} {name!r}: use {group}=<{'|'.join(choices)}>") from None
            except Exception as e:  # unknown keys or groups, wrong types, missing values
                raise ConfigError(one_line(e)) from None


def main() -> None:
    try:
        check_jobs(sys.argv[1:])
    except ConfigError as e:
        print(f"dns-train: error: {e}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    _train()


if __name__ == "__main__":
    main()
