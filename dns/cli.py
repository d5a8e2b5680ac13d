"""The console scripts: `dns-train` (the Hydra app over conf/, shipped as dns.conf), `dns-eval`,
`dns-import-caffe`, `dns-report` and `dns-export`.

Every configuration is composed and validated before any work or any file is written, so bad input
ends with one line on stderr, exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from dns import sweep
from dns.config import ConfigError, RunConfig, register_configs, validate
from dns.rundir import RunDirError, RunLock, check_start, clear_run, run_state

CONFIG_MODULE = "dns.conf"
USAGE_ERROR = 2
register_configs()


@hydra.main(version_base="1.3", config_path="pkg://dns.conf", config_name="config")
def _train(cfg: DictConfig) -> float | tuple[float, float] | None:
    """One job, in this process or in a launcher's (joblib's workers, submitit's jobs): a failed job of a sweep
    returns None, and main() counts it from its report, whichever process ran it."""
    from dns.train import Stop, run

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    log = logging.getLogger("dns")
    try:
        job = validate(cfg)
        if job.threads is None and sweeping:  # jobs side by side on this machine share its cores
            job.threads = sweep.job_threads(hydra_cfg.launcher, sweep.cores())
        if job.resume and sweeping:  # a search's jobs are known only now; a grid's were checked before any ran
            check_resume(job, out_dir)
        report = run(job, out_dir)
    except Stop as stop:
        print(f"dns-train: {stop.status}: {stop}", file=sys.stderr)
        if not sweeping or stop.status == "interrupted":  # a signal stops the whole sweep
            sys.exit(stop.exit_code)
        return None
    except Exception as e:  # a bug or a broken device: its report says failed; the traceback goes to train.log
        log.exception("run failed: %s", out_dir)
        print(f"dns-train: failed: {one_line(e)} (traceback in {out_dir / 'train.log'})", file=sys.stderr)
        if not sweeping:
            sys.exit(1)
        return None  # one broken job must not hide the others: the sweep goes on
    for warning in report["warnings"]:  # e.g. a layer cut away: legal, but the user must see it
        print(f"dns-train: warning: {out_dir}: {warning}", file=sys.stderr)
    log.info("report: %s", out_dir / "report.json")
    return sweep.objective(report, OmegaConf.select(hydra_cfg, "sweeper.direction"))  # what a sweeper optimises


def one_line(error: BaseException) -> str:
    """The messages of an exception and its causes on one line."""
    parts = []
    while error is not None:
        first = str(error).strip().splitlines()
        if first and first[0].startswith("Caught ") and "Original Traceback" in str(error):
            # a DataLoader worker's error: its own message ("ValueError: ...") ends the traceback it carries
            first = [first[-1].partition(": ")[2] or first[-1]]
        if first and first[0] not in parts:
            parts.append(first[0])
        error = error.__cause__
    return ": ".join(parts)


HYDRA_QUERIES = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                 "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--resolve", "--package", "-p")
HYDRA_MODES = ("--run", "-r", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")  # each excludes -m
MULTIRUN = ("-m", "--multirun")


def multirun_flag(args: list[str]) -> str | None:
    """The -m / --multirun in `args`, if any."""
    return next((a for a in args if a in MULTIRUN), None)


def check_jobs(args: list[str], directories: bool = True) -> tuple[list[tuple[Path, RunConfig]], list[str]]:
    """Compose and validate the configuration of every job `args` would run (a search: its fixed settings and the
    ends of its ranges, `dns.sweep`), and (with `directories`) check that each job may start in its run directory
    (`dns.rundir`); returns their run directories and configurations, and `args` with that directory pinned (the
    default names hold the time: Hydra must not name it a second later). Raises ConfigError / RunDirError at the
    first bad job."""
    multirun = multirun_flag(args)
    sweeping = multirun is not None
    modes = [a for a in args if a.split("=")[0] in HYDRA_MODES]
    if sweeping and modes:  # Hydra takes one mode at a time, and says so in a traceback
        raise ConfigError(f"{multirun} and {modes[0]} do not go together (Hydra takes one of them): drop one")
    if any(a in HYDRA_QUERIES or a.startswith("--info=") for a in args):
        return [], args  # Hydra is asked something else than a run
    overrides = [a for a in args if a not in (*MULTIRUN, "-r", "--run")]
    checked: list[tuple[Path, RunConfig]] = []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        try:
            base = sweep.base_overrides(overrides) if sweeping else overrides
            todo = sweep.plan(overrides, compose_hydra(base).hydra.sweeper if sweeping else None)
        except ConfigError:
            raise
        except Exception as e:  # Hydra's override grammar; a range in a grid sweep
            raise ConfigError(one_line(e)) from None
        pin = pinned_directory(todo.configs[0], sweeping)
        if pin is not None:
            args = pinned(args, pin)
            todo.configs = [pinned(job, pin) for job in todo.configs]
        runs = []
        for number, job in enumerate(todo.configs):
            cfg = compose_hydra(job)
            try:  # the directory's name may use settings (${model.name}): if it fails, they say why first
                # a grid's configuration is its job's; a search's jobs take their directories from its first
                numbers = [number] if todo.grid else range(todo.jobs) if number == 0 else []
                run_dirs = [job_dir(cfg, n if sweeping else None) for n in numbers]
                sweep_dir = Path(cfg.hydra.sweep.dir) if sweeping else None
                naming_error = None
            except Exception as e:
                naming_error = e
            with open_dict(cfg):
                search_space = OmegaConf.select(cfg.pop("hydra"), "sweeper.custom_search_space")
            try:
                run = validate(cfg)
            except ConfigError:
                raise
            except Exception as e:  # wrong types, missing values
                raise ConfigError(one_line(e)) from None
            if naming_error is not None:
                raise ConfigError(one_line(naming_error))
            runs.append(run)
            for run_dir in run_dirs:
                shared = [n for n, (other, _) in enumerate(checked) if other == run_dir]
                if shared:
                    raise ConfigError(f"jobs {shared[0]} and {len(checked)} of the sweep would share the run "
                                      f"directory {run_dir}: give hydra.sweep.subdir a value per job, e.g. "
                                      f"${{hydra.job.num}}")
                if directories:
                    check_start(run_dir, run.resume, run.overwrite, sweep_dir)
                if run.resume and todo.grid:
                    check_resume(run, run_dir)
                checked.append((run_dir, run))
        if search_space == sweep.DNS_SEARCH_SPACE:
            try:
                sweep.check_search_space(runs, todo)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    return checked, args


def compose_hydra(overrides: list[str]) -> DictConfig:
    """The configuration of one job, Hydra's settings included; composition errors as one ConfigError."""
    try:
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:  # model=foo: name the choices (the schemas are not choices)
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        if not group:  # the primary config itself: the package runs without its configs
            raise ConfigError(f"the configs ({CONFIG_MODULE}) are not found: install the package with "
                              f"pip install -e . from its checkout") from None
        choices = [o for o in e.options or [] if not o.startswith("base_")]
        raise ConfigError(f"unknown {group} {name!r}: use {group}=<{'|'.join(choices)}>") from None
    except Exception as e:  # unknown keys or groups, wrong types, missing values
        raise ConfigError(one_line(e)) from None


def pinned_directory(overrides: list[str], sweeping: bool) -> str | None:
    """The override that fixes the run (or sweep) directory to its name now, or None if it does not resolve
    (the checks of the job then say why)."""
    key = "hydra.sweep.dir" if sweeping else "hydra.run.dir"
    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        path = str(OmegaConf.select(cfg, key))
    except Exception:
        return None
    if not re.fullmatch(r"[\w./~+-]+", path):  # quoted for Hydra's override grammar
        path = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={path}"


def pinned(args: list[str], pin: str) -> list[str]:
    """`args` with `pin` in place of any override of the same key."""
    key = pin.split("=", 1)[0] + "="
    return [a for a in args if not a.lstrip("+").startswith(key)] + [pin]


def job_dir(cfg: DictConfig, number: int | None) -> Path:
    """The run directory Hydra will give a job: hydra.run.dir, or job `number`'s folder of the sweep."""
    if number is None:
        return Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        cfg.hydra.job.num = number
    return Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)


def check_resume(run, run_dir: Path) -> None:
    """resume=true goes on with a checkpoint only if it was made with the same settings."""
    from dataclasses import asdict

    from dns.checkpoint import load_checkpoint

    latest = run_dir / "checkpoints" / "latest.pt"
    if not latest.is_file():
        return  # killed before its first checkpoint: the run starts over in the same directory
    try:
        saved = load_checkpoint(latest)["config"]
        # a run saved before the baselines existed was DNS with splicing: resuming it as another method is a change
        saved.setdefault("method", {"name": "dns"})
        saved.get("surgery", {}).setdefault("splice", True)
        # before phase_restart, phases were one solver run (a setting that changes nothing with fewer than two)
        saved.get("surgery", {}).setdefault("phase_restart", len(saved.get("surgery", {}).get("phases") or []) < 2)
    except ValueError as e:
        raise ConfigError(f"resume=true: {e}") from None
    differences = [d for d in config_differences(saved, asdict(run)) if d.split("=")[0] not in RESUME_MAY_CHANGE]
    if differences:
        raise ConfigError(f"resume=true: {run_dir} was run with {differences[0]}; resume it with the same "
                          f"settings, or start a new run")


# Settings that do not change a run's result (threads: but for float order): the data may move, a resumed run may
# load it differently.
RESUME_MAY_CHANGE = {"resume", "overwrite", "dataset.root", "dataset.workers", "checkpoint.every", "threads"}


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'key=saved, not current' for every leaf of `saved` that `current` differs in (settings added to dns
    since the run was saved are not compared)."""
    found = []
    for key in sorted(saved):
        a, b = saved[key], current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}={a}, not {b}")
    return found


def take_run_dirs(run_dirs: list[Path]) -> list[RunLock]:
    """Lock every run directory, or none: a refusal leaves no directory made here behind."""
    locks: list[RunLock] = []
    try:
        for run_dir in run_dirs:
            locks.append(RunLock(run_dir))
    except RunDirError:
        for lock in reversed(locks):  # the last made first: a sweep's folder empties before it is taken back
            lock.release(remove=True)
        raise
    return locks


def written(write, program: str, out: Path):
    """Run `write` (which writes `out`); a failure (a read-only or full disk, a file where a folder should be)
    ends the command with one line."""
    try:
        return write()
    except OSError as e:
        fail(program, f"cannot write {out}: {e.strerror or e}: give a writable path")


def fail(program: str, message: str) -> None:
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def check_output(program: str, out: Path, source: str, force: bool, ours) -> None:
    """Refuse to write over the input, a directory, or an existing file that `ours(path)` does not recognise as
    one this command writes (unless --force): an export must never destroy what it reads or a user's file."""
    if out.exists() and out.resolve() == Path(source).resolve():
        fail(program, f"--out {out} is the input file: give another path")
    if out.is_dir():
        fail(program, f"--out {out} is a directory: give a file path")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        fail(program, f"--out {out}: {folder} is a file, not a folder: give another path")
    if out.exists() and not force and not ours(out):
        fail(program, f"--out {out} exists and is not a file {program} writes: give another path, or --force to "
                      f"overwrite it")


def main() -> None:
    from dns.distributed import world

    rank, world_size = world()
    if world_size > 1:  # under torchrun: one job, one run directory for every rank, rank 0 alone writes
        args = sys.argv[1:]
        if multirun_flag(args):
            fail("dns-train", "a distributed run is a single job: drop -m, or sweep outside torchrun")
        if not any(a.startswith("hydra.run.dir=") for a in args):
            fail("dns-train", "under torchrun give hydra.run.dir=DIR, so that every process uses the same run")
        if rank != 0:
            sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    try:
        jobs, sys.argv[1:] = check_jobs(sys.argv[1:], directories=rank == 0)
        if rank == 0:  # every job's directory is this process's from now to its end (torchrun: for all ranks);
            take_run_dirs([run_dir for run_dir, _ in jobs])  # the locks' descriptors stay open until then
    except (ConfigError, RunDirError) as e:
        fail("dns-train", str(e))
    for run_dir, run in jobs if rank == 0 else []:
        if run.overwrite:
            clear_run(run_dir)
    sweeping = multirun_flag(sys.argv) is not None
    try:
        _train()
    finally:  # also when Hydra or a launcher ends the sweep (a job killed on a cluster, a worker out of memory)
        states = {run_dir: run_state(run_dir) for run_dir, _ in jobs} if sweeping else {}
        failed = [f"{run_dir} ({state})" for run_dir, state in states.items() if state != "completed"]
        if failed:  # read from the jobs' reports: whichever process or machine a launcher ran them in
            print(f"dns-train: {len(failed)} job(s) failed: {', '.join(failed)}", file=sys.stderr)
    if failed:
        sys.exit(1)


def eval_main(argv: list[str] | None = None) -> None:
    """dns-eval CHECKPOINT [--json] [--sparse] [dataset overrides]: test error and the per-layer table."""
    from dns.checkpoint import load_checkpoint, misfit, model_of, trained_dataset
    from dns.config import sample_shape
    from dns.data import prepare_dataset
    from dns.models import input_error
    import torch

    from dns.evaluate import evaluation_report, evaluator
    from dns.imagenet import check_image_folder
    from dns.export import as_checkpoint, is_dns_file
    from dns.report import markdown_table

    parser = argparse.ArgumentParser(prog="dns-eval", description="Test error and per-layer sparsity of a "
                                     "checkpoint (dns-train's or dns-import-caffe's).")
    parser.add_argument("checkpoint", help="a .pt checkpoint or a .dns file")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. dataset.root=PATH")
    parser.add_argument("--json", action="store_true", help="print report.json's fields instead of the table")
    parser.add_argument("--sparse", action="store_true", help="evaluate with sparse fully connected layers "
                        "(dns.load(path, sparse=True)), as deployed on the CPU")
    args = parser.parse_intermixed_args(argv)
    ignored = [o for o in args.overrides if not o.lstrip("+").startswith(("dataset.", "dataset="))]
    if ignored:
        fail("dns-eval", f"{ignored[0]}: dns-eval takes only the dataset's settings (dataset=NAME, dataset.KEY=VALUE);"
                         f" the model and its masks come from the checkpoint")
    try:
        checkpoint = as_checkpoint(args.checkpoint) if is_dns_file(args.checkpoint) else load_checkpoint(args.checkpoint)
        overrides = list(args.overrides)
        trained = trained_dataset(checkpoint)
        if trained.get("name") and not any(o.startswith("dataset=") for o in overrides):
            # the test set of the data it was trained on, at the size and pixel format it was trained with
            overrides[:0] = [f"dataset={trained.pop('name')}"] + [
                f"dataset.{key}={value}" for key, value in trained.items()
                if not any(o.startswith(f"dataset.{key}=") for o in overrides)]
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            dataset = OmegaConf.to_object(compose(config_name="config", overrides=overrides)).dataset
        with torch.device("meta"):
            model = model_of(checkpoint)
        problem = misfit(model, checkpoint.get("state_dict") or {}, checkpoint.get("masks"))
        if problem:
            raise ValueError(f"{args.checkpoint}: {problem}")
        wrong_input = input_error(model, sample_shape(dataset), dataset.num_classes, name=checkpoint["model"])
        if wrong_input:
            raise ValueError(f"{wrong_input}: give the dataset it was trained on, dataset=NAME")
        check_image_folder(dataset.root) if dataset.name == "imagenet" else prepare_dataset(dataset)
    except Exception as e:  # a bad file, missing data, or Hydra's composition errors
        fail("dns-eval", one_line(e))
    try:
        report = evaluation_report(checkpoint, evaluator(dataset, torch.device("cpu")), dataset.name, sparse=args.sparse)
    except ValueError as e:  # an image that does not decode
        fail("dns-eval", one_line(e))
    print(json.dumps(report, indent=2) if args.json else markdown_table(report), end="\n" if args.json else "")


def import_caffe_main(argv: list[str] | None = None) -> None:
    """dns-import-caffe FILE.caffemodel --model NAME --out FILE.pt"""
    from dns.caffe import CaffeFormatError, read_net, to_checkpoint
    from dns.checkpoint import is_checkpoint, save_checkpoint
    from dns.models import list_models

    parser = argparse.ArgumentParser(prog="dns-import-caffe", description="Convert a Caffe .caffemodel "
                                     "(the DNS authors' LeNets) into a dns checkpoint.")
    parser.add_argument("caffemodel")
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--out", required=True, type=Path, help="the .pt checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out that is not a dns checkpoint")
    args = parser.parse_args(argv)
    check_output("dns-import-caffe", args.out, args.caffemodel, args.force, is_checkpoint)
    try:
        data = Path(args.caffemodel).read_bytes()
    except OSError as e:
        fail("dns-import-caffe", f"{args.caffemodel}: {e.strerror}")
    try:
        _, layers = read_net(data)
    except CaffeFormatError as e:
        fail("dns-import-caffe", f"{args.caffemodel} is not a binary .caffemodel ({one_line(e)}): give the "
                                 f"weights file Caffe wrote, not a .prototxt, a .pt or a .dns file")
    try:
        content = to_checkpoint(layers, args.model, str(args.caffemodel))
    except CaffeFormatError as e:
        fail("dns-import-caffe", f"{args.caffemodel}: {one_line(e)}")
    written(lambda: save_checkpoint(args.out, **content), "dns-import-caffe", args.out)
    print(f"{args.caffemodel} -> {args.out} ({args.model})")
    print(f"{'layer':<7}{'caffe':<8}{'shape':<16}{'remaining':>26}{'c_rate':>8}{'iter_stop':>10}{'gamma':>8}{'power':>7}")
    for name, settings in content["layers"].items():
        weight, bias = content["masks"][f"{name}.weight"], content["masks"][f"{name}.bias"]
        kept, total = int(weight.sum() + bias.sum()), weight.numel() + bias.numel()
        cells = [settings[k] if settings[k] is not None else "-" for k in ("c", "iter_stop", "gamma", "power")]
        print(f"{name:<7}{content['source']['caffe_layers'][name]:<8}{str(list(weight.shape)):<16}"
              f"{f'{kept:,}/{total:,} ({100 * kept / total:.2f}%)':>26}" + "".join(
                  f"{str(c):>{w}}" for c, w in zip(cells, (8, 10, 8, 7))))


def report_main(argv: list[str] | None = None) -> None:
    """dns-report PATH...: the runs under PATH side by side with the paper, printed and written next to them."""
    import os

    from dns.tables import find_runs, markdown, write

    parser = argparse.ArgumentParser(prog="dns-report", description="Tables of DNS runs beside the paper's: "
                                     "Table 1, the layer-wise tables, and a sweep's Pareto front.")
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders (a multirun) holding them")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write dns_report.{md,csv,png} (default: PATH, or the paths' common folder)")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except FileNotFoundError as e:
        fail("dns-report", str(e))
    if not runs:
        fail("dns-report", f"no run directories (report.json or .hydra/) under {' '.join(map(str, args.paths))}")
    root = Path(os.path.commonpath([p.resolve() for p in args.paths]))
    for run in runs:
        if run.status == "unreadable":
            print(f"dns-report: warning: {run.path / 'report.json'} is truncated or of another schema: the run is "
                  f"listed as unreadable", file=sys.stderr)
    out = args.out or root
    if out.exists() and not out.is_dir():
        fail("dns-report", f"--out {out} is a file: give a directory for dns_report.{{md,csv,png}}")
    files = written(lambda: write(runs, root, out), "dns-report", out)
    print(markdown(runs, root))
    print("written: " + ", ".join(str(p) for p in files.values()))


def export_main(argv: list[str] | None = None) -> None:
    """dns-export CHECKPOINT --out FILE [--float16 | --state-dict]"""
    import torch

    from dns.checkpoint import fill, load_checkpoint, model_of
    from dns.export import dense_bytes, effective_state_dict, is_dns_file, save
    from dns.files import write_atomically

    parser = argparse.ArgumentParser(prog="dns-export", description="Write a checkpoint's pruned model compactly "
                                     "(.dns: kept values with 8-bit relative indices) or as a dense state_dict.")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, type=Path)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--float16", action="store_true", help="store values as float16 (default float32)")
    kind.add_argument("--state-dict", action="store_true",
                      help="write a plain dense-with-zeros state_dict that loads into the unmasked model")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out that is not a .dns file")
    args = parser.parse_args(argv)
    # a .dns file may be written again; a state_dict file cannot be told from any other .pt
    check_output("dns-export", args.out, args.checkpoint, args.force, lambda p: not args.state_dict and is_dns_file(p))
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except ValueError as e:  # its message names the file
        fail("dns-export", str(e))
    try:
        weights = effective_state_dict(checkpoint)
        if checkpoint.get("model"):  # a file that would not load is refused before it is written
            fill(model_of(checkpoint), weights)
    except Exception as e:  # tensors missing, unexpected or of the wrong shape
        fail("dns-export", f"{args.checkpoint}: {one_line(e)}")
    if args.state_dict:
        written(lambda: write_atomically(args.out, lambda tmp: torch.save(weights, tmp)), "dns-export", args.out)
        print(f"{args.out}: dense state_dict of {checkpoint['model']}, {args.out.stat().st_size:,} bytes")
        return
    size = written(lambda: save(checkpoint, args.out, "float16" if args.float16 else "float32"), "dns-export", args.out)
    dense = dense_bytes(checkpoint)
    print(f"{args.out}: {size:,} bytes, {dense / size:.1f}x smaller than the dense float32 weights ({dense:,} bytes)")


if __name__ == "__main__":
    main()
