"""`dns-report`: many runs side by side with the paper — Table 1, the layer-wise tables, a sweep's Pareto front.

Rows of data first (`find_runs`, `table1_rows`, `layer_rows_by_group`, `sweep_rows`), formatting second. Runs are
grouped by model and dataset: each (model, dataset) has its Table 1 block and layer table, and a Pareto front per
method (dns, dns-nosplice, han, gmp) side by side.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dns import paper
from dns.files import write_atomically
from dns.report import error_change, signed_points


@dataclass
class Run:
    path: Path
    status: str  # completed | interrupted | failed (from report.json) | incomplete (no report.json) | unreadable
    report: dict[str, Any] | None
    overrides: list[str]

    @property
    def completed(self) -> bool:
        return self.status == "completed" and self.report is not None

    @property
    def model(self) -> str | None:
        """The architecture: a dns.models name, or 'torchvision <arch>' (torchvision's alexnet is not the paper's)."""
        if not self.report:
            return None
        return f"torchvision {self.report['arch']}" if self.report.get("arch") else self.report["model"]

    @property
    def method(self) -> str:
        """dns, dns-nosplice, han or gmp (reports before the baselines existed: dns)."""
        return (self.report or {}).get("method", "dns")

    @property
    def group(self) -> tuple[str, str]:
        """(model, dataset): the runs that share a Table 1 block, a layer table and a Pareto front."""
        return self.model, self.report.get("dataset", "")


def paper_row(group: tuple[str, str]) -> dict[str, Any] | None:
    """The paper's Table 1 row for runs of this (model, dataset), if it has one."""
    ref = paper.TABLE1.get(group[0])
    return ref if ref and ref["dataset"] == group[1] else None


def network(group: tuple[str, str]) -> str:
    ref = paper_row(group)
    return ref["network"] if ref else f"{group[0]} on {group[1]}"


def is_run_dir(path: Path) -> bool:
    return (path / "report.json").is_file() or (path / ".hydra").is_dir()


REPORT_KEYS = {"model", "dataset", "status", "config", "layers", "total", "test"}  # what the tables read


def read_report(path: Path) -> dict[str, Any] | None:
    """A run's report.json, or None if it is truncated, not JSON, or of another schema (its run is listed as
    unreadable; one bad file must not block the report of the others)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not REPORT_KEYS <= report.keys() or not isinstance(report["test"], dict) \
            or report["status"] not in ("completed", "interrupted", "failed"):
        return None
    return report


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run directory at or below `paths`, in path order."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: give run directories or a multirun directory")
        found += [path] if is_run_dir(path) else sorted(
            (p for p in path.rglob("*") if p.is_dir() and is_run_dir(p)), key=_natural)
    runs = []
    for path in dict.fromkeys(found):
        written = (path / "report.json").is_file()
        report = read_report(path / "report.json") if written else None
        try:
            overrides = [str(o) for o in OmegaConf.load(path / ".hydra" / "overrides.yaml")]
        except Exception:  # none (a run of dns.train.run, not dns-train), or not Hydra's
            overrides = []
        status = report["status"] if report else "unreadable" if written else "incomplete"
        runs.append(Run(path, status, report, overrides))
    return runs


def _natural(path: Path) -> list:
    """Sort multirun job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def label(run: Run, root: Path) -> str:
    name = os.path.relpath(run.path, root)
    return run.path.name if name == "." else name


def dns_iterations(report: dict[str, Any]) -> int:
    return report["iterations"]["surgery"] + report["iterations"]["finetune"]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (compression, error) points: True where no other point is at least as good in both and better in one."""
    def dominates(p, q):
        return p[0] >= q[0] and p[1] <= q[1] and p != q
    return [not any(dominates(q, p) for q in points) for p in points]


def completed_by_group(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """The completed runs grouped by (model, dataset), in order of first appearance."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if run.completed:
            groups.setdefault(run.group, []).append(run)
    return groups


def table1_rows(runs: list[Run], root: Path) -> list[dict[str, Any]]:
    """Per (model, dataset): the paper's row, each completed run, and mean ± std when there are several."""
    rows = []
    for group, mine in completed_by_group(runs).items():
        ref = paper_row(group)
        if ref:
            rows.append({"network": ref["network"], "method": "dns", "source": "paper (Guo et al. 2016)",
                         "reference_error": ref["reference_error"], "final_error": ref["error"],
                         "error_change": error_change(ref["reference_error"], ref["error"]),
                         "final_top5_error": ref.get("top5_error"),
                         "params": ref["params"], "remaining": ref["remaining"], "compression": ref["compression"],
                         "iterations": f"{ref['iterations'][0] // 1000}K → {ref['iterations'][1] // 1000}K"})
        for run in mine:
            rep = run.report
            rows.append({"network": network(group), "method": run.method, "source": label(run, root),
                         "reference_error": rep["test"]["reference_error"], "final_error": rep["test"]["final_error"],
                         "error_change": error_change(rep["test"]["reference_error"], rep["test"]["final_error"]),
                         "final_top5_error": rep["test"].get("final_top5_error"),
                         "params": rep["total"]["params"], "remaining": rep["total"]["remaining"],
                         "compression": rep["total"]["compression"],
                         "iterations": f"{rep['iterations']['reference'] / 1000:g}K → {dns_iterations(rep) / 1000:g}K"})
        for seeds in seed_groups(mine):
            tests = [r.report["test"] for r in seeds]
            ratios = [r.report["total"]["compression"] or 0.0 for r in seeds]
            rows.append({"network": network(group), "method": seeds[0].method,
                         "source": f"mean ± std of {', '.join(label(r, root) for r in seeds)}",
                         "reference_error": None, "final_error": mean_std([t["final_error"] for t in tests]),
                         "error_change": mean_std([error_change(t["reference_error"], t["final_error"]) for t in tests]),
                         "final_top5_error": mean_std([t.get("final_top5_error") for t in tests]),
                         "params": None, "remaining": None,
                         "compression": mean_std(ratios), "iterations": ""})
    return rows


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """(mean, sample std) of two or more values; None if any is missing."""
    if None in values:
        return None
    return statistics.mean(values), statistics.stdev(values)


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs whose overrides differ in the seed alone (and the reference checkpoint each seed starts from, and whether
    it was resumed), grouped; only groups of two or more."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    ignored = ("seed=", "hydra.", "reference.checkpoint=", "resume=")
    for run in runs:
        key = tuple(sorted(o for o in run.overrides if not o.startswith(ignored)))
        groups.setdefault(key, []).append(run)
    return [group for group in groups.values() if len(group) > 1]


def layer_rows_by_group(runs: list[Run], root: Path) -> dict[tuple[str, str], tuple[list[str], list[list[Any]]]]:
    """Per (model, dataset): column names and rows of remaining % per layer (paper, then each completed run)."""
    tables = {}
    for group, mine in completed_by_group(runs).items():
        ref = paper_row(group)
        published = paper.LAYERS.get(group[0], {}) if ref else {}
        header = ["layer", "parameters", "paper"] + [label(r, root) for r in mine]
        rows = []
        for i, layer in enumerate(mine[0].report["layers"]):
            rows.append([layer["name"], layer["params"], published.get(layer["name"])]
                        + [r.report["layers"][i]["remaining_pct"] for r in mine])
        total_paper = 100 * ref["remaining"] / ref["params"] if ref else None
        rows.append(["total", mine[0].report["total"]["params"], total_paper]
                    + [r.report["total"]["remaining_pct"] for r in mine])
        tables[group] = (header, rows)
    return tables


def series(runs: list[Run]) -> dict[tuple[str, int], list[Run]]:
    """Completed `runs` grouped by (method, iterations after the reference), in order of first appearance: each
    has its own Pareto front (Han at twice the budget is another series than Han at DNS's)."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, dns_iterations(run.report)), []).append(run)
    return groups


def sweep_rows(runs: list[Run], root: Path) -> list[dict[str, Any]]:
    """One row per run, failed ones included; completed runs on the error-compression Pareto front of their model,
    dataset, method and budget are marked (a LeNet-5 run does not push a LeNet-300-100 run off the front, nor Han's
    DNS's: `series`)."""
    front = {}
    for group in completed_by_group(runs).values():
        for done in series(group).values():
            front.update(zip((id(r) for r in done), pareto_front(
                [(r.report["total"]["compression"] or 0.0, r.report["test"]["final_error"]) for r in done])))
    rows = []
    for run in runs:
        rep = run.report or {}
        total = rep.get("total") or {}  # None in a run stopped before surgery
        rows.append({
            "run": label(run, root), "status": run.status, "model": run.model or "", "dataset": rep.get("dataset", ""),
            "method": run.method if run.report else "",
            "overrides": " ".join(run.overrides),
            "compression": total.get("compression"),
            "weight_compression": total.get("weight_compression"),
            "model_compression": total.get("model_compression"),  # over all parameters, BatchNorm included
            "remaining": total.get("remaining"),
            "bytes_ratio": rep.get("bytes", {}).get("ratio_float32"),
            "bytes_ratio_float16": rep.get("bytes", {}).get("ratio_float16"),
            "reference_error": rep.get("test", {}).get("reference_error"),
            "final_error": rep.get("test", {}).get("final_error"),
            "error_change": error_change(rep.get("test", {}).get("reference_error"),
                                         rep.get("test", {}).get("final_error")),
            "final_top5_error": rep.get("test", {}).get("final_top5_error"),
            "reference_iters": rep.get("iterations", {}).get("reference"),
            "dns_iters": dns_iterations(rep) if run.completed else None,
            "pareto": front.get(id(run), False),
        })
    return rows


def _cell(x, scale: float, digits: int, unit: str) -> str:
    """A number, or a (mean, std) pair, scaled and formatted; empty for None."""
    if x is None:
        return ""
    if isinstance(x, tuple):
        return f"{scale * x[0]:.{digits}f} ± {scale * x[1]:.{digits}f}{unit}"
    return f"{scale * x:.{digits}f}{unit}"


def _pct(x) -> str:
    return _cell(x, 100.0, 2, " %")


def _change(x) -> str:
    """Points of error against the run's own reference: +0.12, −0.29, or mean ± std."""
    if isinstance(x, tuple):
        return f"{signed_points(x[0])} ± {100 * x[1]:.2f}"
    return "" if x is None else signed_points(x)


def _times(x) -> str:
    return _cell(x, 1.0, 1, "×")


def _count(x) -> str:
    return "" if x is None else f"{x:,}"


def markdown(runs: list[Run], root: Path) -> str:
    table1 = table1_rows(runs, root)
    top5 = any(r["final_top5_error"] is not None for r in table1)  # a column only for ImageNet runs
    lines = ["# DNS runs against the paper", "", "## Table 1", "",
             "| network | method | run | reference error | error | change (points) |" + (" top-5 error |" if top5 else "")
             + " parameters | remaining | compression | iterations (reference → pruning) |",
             "|---|---|---|---:|---:|---:|" + ("---:|" if top5 else "") + "---:|---:|---:|---|"]
    for r in table1:
        lines.append(f"| {r['network']} | {r['method']} | {r['source']} | {_pct(r['reference_error'])} | "
                     f"{_pct(r['final_error'])} | {_change(r['error_change'])} | "
                     + (f"{_pct(r['final_top5_error'])} | " if top5 else "")
                     + f"{_count(r['params'])} | {_count(r['remaining'])} | {_times(r['compression'])} | {r['iterations']} |")
    for group, (header, rows) in layer_rows_by_group(runs, root).items():
        lines += ["", f"## {network(group)}: remaining % per layer (paper's Tables 2–3)", "",
                  "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for row in rows:
            cells = [row[0], f"{row[1]:,}"] + ["" if v is None else f"{v:.2f} %" for v in row[2:]]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "",
              "Pareto front (no other run of the same network, dataset, method and budget is both more compressed and "
              "more accurate): ★."
              " Compression counts the conv and fc layers; over all parameters it counts the unmasked ones (BatchNorm,"
              " ...) too.", "",
              "| run | method | status | overrides | compression | over all parameters | bytes (float32 / float16) "
              "| error | iterations (reference → pruning) | front |",
              "|---|---|---|---|---:|---:|---:|---:|---|:-:|"]
    for r in sweep_rows(runs, root):
        iters = f"{r['reference_iters']:,} → {r['dns_iters']:,}" if r["dns_iters"] is not None else ""
        size = f"{_times(r['bytes_ratio'])} / {_times(r['bytes_ratio_float16'])}" if r["bytes_ratio"] else ""
        lines.append(f"| {r['run']} | {r['method']} | {r['status']} | {r['overrides'] or '(defaults)'} | "
                     f"{_times(r['compression'])} | "
                     f"{_times(r['model_compression'])} | {size} | {_pct(r['final_error'])} | {iters} | {'★' if r['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(runs: list[Run], path: Path) -> None:
    """Test error against compression (log scale) of the completed runs, with the published points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = {r.method for r in runs if r.completed}
    markers = dict(zip(["dns", "dns-nosplice", "han", "gmp"], "o^sD"))
    for group, mine in completed_by_group(runs).items():
        name, ref = network(group), paper_row(group)
        color = None  # the first method's, for the published points
        groups = series(mine)
        for (method, iters), done in groups.items():  # one front per method and budget
            points = [(r.report["total"]["compression"] or 0.0, 100 * r.report["test"]["final_error"]) for r in done]
            label = f"{name}: {method}" if len(methods) > 1 else f"{name}: our runs"
            budgets = sum(m == method for m, _ in groups)
            line = ax.scatter(*zip(*points), marker=markers.get(method, "o"), zorder=3,
                              label=label + (f", {iters / 1000:g}K iterations" if budgets > 1 else ""))
            front = sorted(p for p, on in zip(points, pareto_front([(c, e) for c, e in points])) if on)
            ax.plot(*zip(*front), color=line.get_facecolor()[0], linewidth=1, alpha=0.6)
            color = color if color is not None else line.get_facecolor()[0]
        if ref:
            ax.scatter([ref["compression"]], [100 * ref["error"]], marker="*", s=180, color=color,
                       edgecolor="black", label=f"{name}: DNS paper", zorder=4)
            for peer, error, compression in paper.OTHERS.get(group[0], []):
                ax.scatter([compression], [100 * error], marker="x", color=color, zorder=3)
                ax.annotate(peer, (compression, 100 * error), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(xscale="log", xlabel="compression (parameters / remaining, log scale)", ylabel="test error %",
           title="Error against compression")
    low, high = ax.get_xlim()  # labels within a decade too, unless the points span so many that they would overlap
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0) if high <= 100 * low else (1.0,)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write(runs: list[Run], root: Path, out_dir: Path) -> dict[str, Path]:
    """dns_report.md, dns_report.csv and (with completed runs) dns_report.png in `out_dir`."""
    files = {"md": out_dir / "dns_report.md", "csv": out_dir / "dns_report.csv"}
    write_atomically(files["md"], lambda tmp: tmp.write_text(markdown(runs, root)))
    write_atomically(files["csv"], lambda tmp: write_csv(tmp, sweep_rows(runs, root)))
    if any(r.completed for r in runs):
        files["png"] = out_dir / "dns_report.png"
        write_atomically(files["png"], lambda tmp: plot(runs, tmp))
    return files
