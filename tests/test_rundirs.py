"""Nothing lost, nothing mixed: run directories that protect earlier results, the lock, overwrite=true, sweeps that
go on after an interruption, and commands that end in one line (Ctrl-C while starting, a closed pipe)."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import completed_run, console_argv, wait_for_surgery_checkpoint

QUICK = ["model=lenet300", "reference.iters=100", "surgery.iters=100", "finetune.iters=0", "eval_every=50",
         "log_every=50", "checkpoint.every=20"]
LONG = ["model=lenet300", "reference.iters=0", "surgery.iters=100000", "checkpoint.every=10"]


def contents(folder):
    """Every file under `folder` and its bytes: what must not change."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hold_lock(run_dir):
    """Another process holding `run_dir`'s lock, as a running dns-train does; returns the Popen (kill it)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from dns.rundir import RunLock; RunLock(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(600)", str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_completed_run_is_byte_for_byte_unchanged_by_every_refusal(dns_train, data_root, tmp_path):
    run = completed_run(tmp_path, data_root, *QUICK)
    before = contents(run)
    assert (run / ".dns.lock").read_text().strip().isdigit()  # the pid of the run that held it

    rerun = dns_train(*QUICK, "surgery.c=2", "hydra.run.dir=run")  # a new run into it, another configuration
    assert rerun.returncode == 2
    assert rerun.stderr.strip() == (f"dns-train: error: run already holds a run (completed): go on with it with "
                                    f"resume=true, start afresh in a new hydra.run.dir, or replace it with overwrite=true")

    assert contents(run) == before
    holder = hold_lock(run)  # another run going on with it (it writes its pid into the lock file)
    before = contents(run)
    try:
        for extra in (["resume=true"], []):  # a concurrent start, going on or afresh
            result = dns_train(*QUICK, *extra, "hydra.run.dir=run")
            assert result.returncode == 2
            assert result.stderr.strip() == (f"dns-train: error: run is in use by a running dns-train (pid "
                                             f"{holder.pid}): wait for it to end, or give another (hydra.run.dir=DIR, "
                                             f"or hydra.sweep.dir=DIR with -m)")
    finally:
        holder.kill()
        holder.wait()

    final = str(run / "checkpoints" / "final.pt")
    export = subprocess.run(console_argv("dns-export", final, "--out", final), capture_output=True, text=True)
    assert export.returncode == 2 and "is the input file" in export.stderr
    assert contents(run) == before


def test_two_runs_started_into_one_directory_do_not_mix(start_dns_train, dns_train, tmp_path):
    first = start_dns_train(*LONG, "hydra.run.dir=run")
    try:
        wait_for_surgery_checkpoint(first, tmp_path / "run", 10)
        second = dns_train(*LONG, "hydra.run.dir=run", "resume=true")
        assert second.returncode == 2
        assert f"run is in use by a running dns-train (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "interrupted"
    steps = [int(line.split(",")[1]) for line in (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))  # one run's rows, in order: no other process wrote there


def test_overwrite_replaces_the_run_and_keeps_other_files(dns_train, data_root, tmp_path):
    run = completed_run(tmp_path, data_root, *QUICK)
    (run / "notes.txt").write_text("mine\n")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "report.md").write_text("not a run\n")
    refused = dns_train(*QUICK, "hydra.run.dir=paper", "overwrite=true")  # overwrite replaces runs, nothing else
    assert refused.returncode == 2 and "paper is not empty (it holds report.md)" in refused.stderr
    assert (tmp_path / "paper" / "report.md").read_text() == "not a run\n"
    result = dns_train(*QUICK, "surgery.c=3", "finetune.iters=0", "checkpoint.every=0", "hydra.run.dir=run",
                       "overwrite=true")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["config"]["surgery"]["c"] == 3.0 and report["config"]["overwrite"] is True
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert final["config"]["surgery"]["c"] == 3.0  # not the old run's final.pt
    assert (run / "train.log").read_text().count("reference: test error") == 1  # the old log is gone
    assert (run / "notes.txt").read_text() == "mine\n"


def test_an_interrupted_sweep_goes_on_with_resume(start_dns_train, dns_train, tmp_path):
    sweep = ["-m", *QUICK, "surgery.c=1,2,3", "hydra.sweep.dir=sweep"]
    process = start_dns_train(*sweep)
    wait_for_surgery_checkpoint(process, tmp_path / "sweep" / "0", 20)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 128 + signal.SIGINT  # a signal stops the whole sweep
    assert json.loads((tmp_path / "sweep" / "0" / "report.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "sweep" / "1" / "report.json").exists()
    (tmp_path / "sweep" / "1" / ".dns.lock").unlink()
    (tmp_path / "sweep" / "1").rmdir()  # job 1 as if its directory was never made; job 2's holds only the lock

    result = dns_train(*sweep, "resume=true")
    assert result.returncode == 0, result.stderr
    reports = [json.loads((tmp_path / "sweep" / str(n) / "report.json").read_text()) for n in range(3)]
    assert [r["status"] for r in reports] == ["completed"] * 3
    assert [r["config"]["surgery"]["c"] for r in reports] == [1.0, 2.0, 3.0]


def test_a_legal_setting_that_cuts_the_network_warns_on_stderr(dns_train, tmp_path):
    result = dns_train(*QUICK, "surgery.c=50", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith(f"dns-train: warning: {tmp_path / 'run'}: ")]
    assert warnings and "has no weight left" in warnings[0] and "the network is cut there" in warnings[0]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["warnings"]


def test_mnist_as_the_official_gz_files_trains_like_the_raw_ones(data_root, tmp_path):
    from dns.config import DatasetConfig
    from dns.data import load_split, prepare_dataset

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((data_root / "MNIST" / "raw" / name).read_bytes(), 1))
    for download in (False, True):  # nothing is downloaded either way: the .gz files are the data
        assert prepare_dataset(DatasetConfig(name="mnist", root=str(tmp_path), download=download)) == 60000
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    for train in (True, False):
        gz = load_split(DatasetConfig(name="mnist", root=str(tmp_path)), train)
        plain = load_split(DatasetConfig(name="mnist", root=str(data_root)), train)
        assert torch.equal(gz.images, plain.images) and torch.equal(gz.labels, plain.labels)


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    from dns import data
    from dns.config import DatasetConfig

    class MNIST:  # as torchvision's without network: the folders made, then an error
        def __init__(self, root, train, download):
            (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setitem(data.TORCHVISION_CLASSES, "mnist", MNIST)
    with pytest.raises(FileNotFoundError, match="downloading it failed"):
        data.prepare_dataset(DatasetConfig(name="mnist", root=str(tmp_path / "data"), download=True))
    assert list(tmp_path.iterdir()) == []


def test_the_lock_admits_one_holder_and_goes_with_it(tmp_path):
    from dns.rundir import RunDirError, RunLock, lock_holder

    run = tmp_path / "sweep" / "0"
    first = RunLock(run)
    assert lock_holder(run) == os.getpid()
    with pytest.raises(RunDirError, match=f"sweep/0 is in use by a running dns-train \\(pid {os.getpid()}\\)"):
        RunLock(run)  # another open of the lock file: refused even within one process
    child = os.fork()
    if child == 0:  # a forked worker does not keep the lock once its parent lets go
        time.sleep(2)
        os._exit(0)
    first.release(remove=True)
    assert lock_holder(run) is None and not (tmp_path / "sweep").exists()  # the folders it made are gone too
    second = RunLock(run)
    assert lock_holder(run) == os.getpid()
    second.release()
    os.waitpid(child, 0)


def test_default_directories_are_the_ones_locked_and_used(dns_train, tmp_path):
    assert dns_train(*QUICK, "reference.iters=20", "surgery.iters=20").returncode == 0
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "report.json").is_file() and (runs[0] / ".dns.lock").is_file()

    result = dns_train("-m", *QUICK, "reference.iters=20", "surgery.iters=20", "surgery.c=1,2,3,4")
    assert result.returncode == 0, result.stderr
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1 and sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert all((sweeps[0] / str(n) / "report.json").is_file() for n in range(4))


def test_a_sweep_names_its_jobs_by_subdir(dns_train, tmp_path):
    result = dns_train("-m", *QUICK, "reference.iters=20", "surgery.iters=20", "surgery.c=1,2",
                       "hydra.sweep.dir=sweep", "hydra.sweep.subdir=c${surgery.c}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["c1.0", "c2.0"]
    same = dns_train("-m", *QUICK, "surgery.c=1,2", "hydra.sweep.dir=other", "hydra.sweep.subdir=same")
    assert same.returncode == 2 and not (tmp_path / "other").exists()
    assert same.stderr.strip() == ("dns-train: error: jobs 0 and 1 of the sweep would share the run directory "
                                   "other/same: give hydra.sweep.subdir a value per job, e.g. ${hydra.job.num}")


def test_dns_report_lists_an_unreadable_report_and_reports_the_rest(dns_train, data_root, tmp_path):
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    good = completed_run(tmp_path / "sweep" / "0", data_root, *QUICK)
    for name, text in (("1", good.joinpath("report.json").read_text()[:200]), ("2", '{"schema": "another"}\n')):
        (tmp_path / "sweep" / name).mkdir()
        (tmp_path / "sweep" / name / "report.json").write_text(text)
    result = subprocess.run(console_argv("dns-report", str(tmp_path / "sweep")), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is truncated or of another schema: the run is listed as unreadable") == 2
    table = (tmp_path / "sweep" / "dns_report.md").read_text()
    assert table.count("| unreadable |") == 2 and "| completed |" in table
    assert (tmp_path / "sweep" / "dns_report.png").is_file()  # the completed run is plotted
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("after", [0.3, 1.5])
def test_ctrl_c_while_starting_is_one_line(data_root, tmp_path, after):
    process = subprocess.Popen(console_argv("dns-train", *LONG, "hydra.run.dir=run"), cwd=tmp_path,
                               env={**os.environ, "DNS_DATA": str(data_root)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGINT
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("dns-train: interrupted"), stderr


def test_a_reader_that_closes_the_pipe_ends_no_command_in_a_traceback(data_root, tmp_path):
    caffemodel = next((data_root / "dns-caffe" / "lenet5").glob("*.caffemodel"))
    process = subprocess.Popen(console_argv("dns-import-caffe", str(caffemodel), "--model", "lenet5", "--out",
                                            str(tmp_path / "m.pt")), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -0` does
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 128 + signal.SIGPIPE and stderr == ""
    assert torch.load(tmp_path / "m.pt", weights_only=True)["model"] == "lenet5"  # the file is written whole
