"""Per-run reports: rows of data first (layer_rows, totals, History), formatting second."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dns.files import write_atomically

if TYPE_CHECKING:  # (dns.surgeon imports this module)
    from dns.surgeon import LayerState, Surgeon


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None (null in JSON) for a layer cut to nothing."""
    return numerator / denominator if denominator else None


def layer_rows(surgeon: "Surgeon") -> list[dict[str, Any]]:
    """One row per prunable layer: the paper's Tables 2-3 plus the surgery state behind them."""
    rows = []
    for layer in surgeon.layers:
        params, remaining = layer.param_count(), layer.remaining()
        rows.append({
            "name": layer.name, "kind": layer.kind, "shape": list(layer.params["weight"].shape),
            "params": params, "remaining": remaining, "remaining_pct": 100.0 * remaining / params,
            "weight_params": layer.param_count(("weight",)), "weight_remaining": layer.remaining(("weight",)),
            "under_surgery": layer.under_surgery, "c": layer.c, "iter_stop": layer.iter_stop if layer.under_surgery
            else None, "mu": layer.mu, "sigma": layer.sigma, "a": layer.a, "b": layer.b,
            "pruned": layer.pruned, "spliced": layer.spliced,
        })
    return rows


def dense_rows(surgeon: "Surgeon") -> list[dict[str, Any]]:
    """One row per module outside the prunable layers that holds parameters of its own (BatchNorm, LayerNorm,
    embeddings, ...): never masked, so all of it remains."""
    masked = {id(layer.module) for layer in surgeon.layers}
    rows = []
    for name, module in surgeon.model.named_modules():
        params = list(module.parameters(recurse=False))
        if params and id(module) not in masked:
            count = sum(p.numel() for p in params)
            rows.append({"name": name or "(model)", "kind": type(module).__name__, "params": count,
                         "remaining": count})
    return rows


def totals(rows: list[dict[str, Any]], dense: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Compression = parameters of the prunable layers / those whose mask is 1, with and without biases; and
    over every parameter of the model (`dense`: the rows of the modules that are not masked)."""
    params, remaining = sum(r["params"] for r in rows), sum(r["remaining"] for r in rows)
    w_params, w_remaining = sum(r["weight_params"] for r in rows), sum(r["weight_remaining"] for r in rows)
    all_params = params + sum(r["params"] for r in dense)
    all_remaining = remaining + sum(r["remaining"] for r in dense)
    return {"params": params, "remaining": remaining, "remaining_pct": 100.0 * remaining / params,
            "compression": ratio(params, remaining), "weight_params": w_params, "weight_remaining": w_remaining,
            "weight_compression": ratio(w_params, w_remaining), "model_params": all_params,
            "model_remaining": all_remaining, "model_compression": ratio(all_params, all_remaining)}


class History:
    """history.csv, one row per logged iteration, flushed as it goes so an interrupted run keeps it.

    The rows are kept in memory too: a checkpoint stores them (`state_dict`), and a resumed run
    rewrites the file from them, dropping rows logged after that checkpoint.
    """

    def __init__(self, path: Path | None, layer_names: list[str], state: dict[str, Any] | None = None):
        """`path` None keeps the rows in memory only (the ranks of a distributed run other than 0)."""
        self.layer_names = layer_names
        self.columns = (["stage", "step", "iteration", "lr", "loss", "train_error", "sigma", "remaining_pct"]
                        + [f"{name}_remaining_pct" for name in layer_names] + ["pruned", "spliced", "test_error", "phase"])
        state = state or {"rows": [], "pruned": 0, "spliced": 0}
        self.rows: list[dict[str, Any]] = list(state["rows"])
        self.pruned, self.spliced = state["pruned"], state["spliced"]  # totals at the previous row
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path if path is not None else os.devnull, "w", newline="")
        self.writer = csv.DictWriter(self.file, self.columns)
        self.writer.writeheader()
        self.writer.writerows(self.rows)
        self.file.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "pruned": self.pruned, "spliced": self.spliced}

    def log(self, stage: str, step: int, iteration: int, *, lr: float, loss: float, train_error: float,
            sigma: float | None, layers: "list[LayerState] | None", test_error: float | None,
            phase: str | None = None) -> dict[str, Any]:
        """Write a row; `layers` None means no masks yet (the dense reference: everything remains)."""
        row: dict[str, Any] = {"stage": stage, "step": step, "iteration": iteration, "lr": lr, "loss": loss,
                               "train_error": train_error, "sigma": sigma, "test_error": test_error, "phase": phase}
        if layers is None:
            row.update({f"{name}_remaining_pct": 100.0 for name in self.layer_names},
                       remaining_pct=100.0, pruned=0, spliced=0)
        else:
            remaining = {layer.name: layer.remaining() for layer in layers}
            for layer in layers:
                row[f"{layer.name}_remaining_pct"] = 100.0 * remaining[layer.name] / layer.param_count()
            row["remaining_pct"] = 100.0 * sum(remaining.values()) / sum(l.param_count() for l in layers)
            pruned, spliced = sum(l.pruned for l in layers), sum(l.spliced for l in layers)
            row.update(pruned=pruned - self.pruned, spliced=spliced - self.spliced)
            self.pruned, self.spliced = pruned, spliced
        self.rows.append(row)
        self.writer.writerow(row)
        self.file.flush()
        return row

    def close(self) -> None:
        self.file.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.csv back as rows of numbers (empty cells become None)."""
    def parse(key: str, value: str):
        if key in ("stage", "phase"):
            return value
        return None if value == "" else float(value)

    with open(path, newline="") as f:
        return [{k: parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def error_change(reference: float | None, final: float | None) -> float | None:
    """The final error minus the reference's (a fraction; below 0: better than the dense reference), rounded to
    1e-6 so that float noise does not show; None where either is missing."""
    return None if reference is None or final is None else round(final - reference, 6)


def signed_points(x: float) -> str:
    """A change of error in percentage points, signed: +0.12, −0.29."""
    return f"{100 * x:+.2f}".replace("-", "−")


def _pct(x: float) -> str:
    return f"{x:.2f} %"


def _times(x: float | None) -> str:
    return "∞" if x is None else f"{x:.1f}×"


# what a layer's `c` holds under each method (the `setting` of its pruner class)
SETTING = {"han": "quality", "gmp": "final sparsity"}


def layer_table(rows: list[dict[str, Any]], dense: list[dict[str, Any]] = (), setting: str = "c") -> str:
    """The per-layer table of `layer_rows` in the form of the paper's Tables 2-3, and the compression; the
    modules that are not masked (`dense_rows`) close it, one line per kind. `setting` heads the column of `c`."""
    def num(x: float | None, digits: int = 4) -> str:
        return "" if x is None else f"{x:.{digits}g}"

    total = totals(rows, dense)
    lines = [f"| layer | parameters | remaining | remaining % | {setting} | a | b | pruned | spliced |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params']:,} | {r['remaining']:,} | {_pct(r['remaining_pct'])} | "
                     f"{num(r['c'])} | {num(r['a'])} | {num(r['b'])} | {r['pruned']:,} | {r['spliced']:,} |")
    lines.append(f"| **total** | **{total['params']:,}** | **{total['remaining']:,}** | "
                 f"**{_pct(total['remaining_pct'])}** | | | | | |")
    kinds: dict[str, list[int]] = {}
    for r in dense:
        kinds.setdefault(r["kind"], []).append(r["params"])
    for kind, counts in kinds.items():
        lines.append(f"| {kind} ×{len(counts)}, not masked | {sum(counts):,} | {sum(counts):,} | {_pct(100)} "
                     f"| | | | | |")
    lines += ["", f"Compression: **{_times(total['compression'])}** over weights and biases "
                  f"({_times(total['weight_compression'])} over weights alone)"
                  + (f"; {_times(total['model_compression'])} over all {total['model_params']:,} parameters of the "
                     f"model, those not masked included." if dense else ".")]
    return "\n".join(lines) + "\n"


def network_name(report: dict[str, Any]) -> str:
    """The model of a report: its dns.models name, or 'torchvision <arch>'."""
    return f"torchvision {report['arch']}" if report.get("arch") else report["model"]


def markdown_table(report: dict[str, Any]) -> str:
    """report.md: the per-layer table in the form of the paper's Tables 2-3, and the errors."""
    total, test = report["total"], report["test"]
    if total is None or test.get("final_error") is None:  # stopped before surgery: no masks to show
        return (f"# {network_name(report)} on {report['dataset']}: {report['status']}\n\n"
                f"{report.get('error', '')}\n")
    lines = [f"# {network_name(report)} on {report['dataset']}: {report['status']}", "",
             *([f"Stopped early: {report['error']}", ""] if report.get("error") else []),
             *([f"Method: {report['method']}.", ""] if report.get("method", "dns") != "dns" else []),
             layer_table(report["layers"], report.get("dense_layers") or [], SETTING.get(report.get("method"), "c"))]
    if "bytes" in report:
        b = report["bytes"]
        lines += [f"Size on disk: {b['dense_float32']:,} bytes dense (float32) → {b['dns_float32']:,} bytes as .dns "
                  f"(**{b['ratio_float32']:.1f}×**), {b['dns_float16']:,} with float16 values "
                  f"({b['ratio_float16']:.1f}×).", ""]
    if test.get("reference_error") is not None:
        lines.append(f"Test error: {_pct(100 * test['reference_error'])} (reference) → "
                     f"**{_pct(100 * test['final_error'])}** (after surgery and fine-tuning): "
                     f"{signed_points(error_change(test['reference_error'], test['final_error']))} points against the reference.")
    else:
        lines.append(f"Test error: **{_pct(100 * test['final_error'])}**"
                     + (" with sparse fully connected layers." if "sparse_layers" in report else "."))
    if "sparse_layers" in report:
        shown = ", ".join(f"{name} ({_pct(100 * d)})" for name, d in report["sparse_layers"].items())
        lines.append(f"Sparse layers (compressed rows, dns.sparse): {shown or 'none (every fc layer above the density threshold)'}.")
    if test.get("final_top5_error") is not None:
        before = test.get("reference_top5_error")
        lines.append(f"Top-5 error: {'' if before is None else _pct(100 * before) + ' (reference) → '}"
                     f"**{_pct(100 * test['final_top5_error'])}**.")
    if report.get("phases"):
        names = [r["name"] for r in report["layers"]]
        lines += ["", "Surgery phases (remaining % of each layer when the phase ended):", "",
                  "| phase | layers | iterations | test error | " + " | ".join(names) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(names)]
        for i, phase in enumerate(report["phases"], 1):
            lines.append(f"| {i} | {', '.join(phase['layers'])} | {phase['iters']:,} | "
                         f"{_pct(100 * phase['test_error'])} | "
                         + " | ".join(_pct(phase["remaining_pct"][n]) for n in names) + " |")
    if "iterations" in report:
        lines += ["", "| stage | iterations | wall seconds |", "|---|---:|---:|"]
        for stage, iters in report["iterations"].items():
            lines.append(f"| {stage} | {iters:,} | {report['wall_seconds'].get(stage, 0):.1f} |")
    return "\n".join(lines) + "\n"


def plot_history(rows: list[dict[str, Any]], layer_names: list[str], folder: Path) -> None:
    """plots/remaining.png (remaining % per layer) and plots/test_error.png, over all iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    many = len(layer_names) > 10  # a deep net: layers coloured by depth, the first and the last named
    for i, name in enumerate(layer_names):
        style = dict(color=matplotlib.colormaps["viridis"](i / (len(layer_names) - 1)), linewidth=0.8) if many else {}
        named = not many or i in (0, len(layer_names) - 1)
        ax.plot(steps, [r[f"{name}_remaining_pct"] for r in rows], label=name if named else None, **style)
    ax.plot(steps, [r["remaining_pct"] for r in rows], "k--", label="total")
    ax.set(xlabel="iteration (all stages)", ylabel="remaining %", yscale="log", title="Remaining connections")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    _mark_stages(ax, rows)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "remaining.png", dpi=120)
    plt.close(fig)

    tested = [r for r in rows if r["test_error"] is not None and not math.isnan(r["test_error"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in tested], [100 * r["test_error"] for r in tested], "o-")
    ax.set(xlabel="iteration (all stages)", ylabel="test error %", title="Test error")
    _mark_stages(ax, rows)
    fig.tight_layout()
    fig.savefig(folder / "test_error.png", dpi=120)
    plt.close(fig)


def _mark_stages(ax, rows: list[dict[str, Any]]) -> None:
    """Dotted lines where a stage ends, so the plots show reference / surgery / fine-tune."""
    for previous, row in zip(rows, rows[1:]):
        if row["stage"] != previous["stage"] or row.get("phase") != previous.get("phase"):
            ax.axvline(previous["step"], color="grey", linestyle=":", linewidth=1)


def write_json(path: Path, content: dict[str, Any]) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(content, indent=2, default=str) + "\n"))


def write_reports(out_dir: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and plots/ from the report and the run's history.csv."""
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(markdown_table(report))
    history = out_dir / "history.csv"
    if history.exists():
        plot_history(read_history(history), [r["name"] for r in report["layers"]], out_dir / "plots")
