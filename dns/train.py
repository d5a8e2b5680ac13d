"""One DNS run: (1) dense reference, (2) surgery, (3) fine-tuning with frozen masks; then the reports.

The run can stop at any moment and go on: checkpoints/latest.pt holds everything the next iteration
depends on (weights, masks, thresholds, optimizer, batch order, random states, history), so a resumed
run ends bitwise identical to one that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dns.checkpoint import load_checkpoint, save_checkpoint
from dns.config import RunConfig
from dns.data import ShuffledBatches, Split, load_split
from dns.evaluate import evaluate
from dns.export import byte_report
from dns.masks import mask_state_dict, plain_state_dict
from dns.models import get_model, layer_kind, prunable_layers
from dns.optim import build_optimizer, learning_rate, set_learning_rate
from dns.report import History, layer_rows, totals, write_reports
from dns.surgeon import Surgeon, select_layers
from dns.thresholds import surgery_probability

log = logging.getLogger(__name__)

STAGES = ("reference", "surgery", "finetune", "done")  # the order a run goes through; a checkpoint names one


class Stop(Exception):
    """Ends a run before its last iteration; `status` goes into report.json, `exit_code` to the shell."""

    def __init__(self, status: str, message: str, exit_code: int):
        super().__init__(message)
        self.status, self.exit_code = status, exit_code


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The global random states (numpy's as tensors, so checkpoints load with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                        "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def build_surgeon(model: nn.Module, cfg: RunConfig, initial_masks: dict | None) -> Surgeon:
    """The surgeon of this run: per-layer c and iter_stop resolved from the surgery config."""
    s = cfg.surgery
    kinds = {name: layer_kind(m) for name, m in prunable_layers(model).items()}
    selected = select_layers(s.layers, kinds)
    default_stop = s.iters if s.iter_stop is None else s.iter_stop
    return Surgeon(model,
                   c={name: s.c_per_layer.get(name, s.c) for name in selected},
                   iter_stop={name: s.iter_stop_per_layer.get(name, default_stop) for name in selected},
                   margin=s.margin, gamma=s.gamma, power=s.power, prune_bias=s.prune_bias,
                   seed=cfg.seed + 1, min_remaining=s.min_remaining, initial_masks=initial_masks)


def first_non_finite(model: nn.Module, images: torch.Tensor) -> str:
    """Where non-finite values start: the first layer with such weights, else the first whose output has them."""
    layers = prunable_layers(model)
    for name, layer in layers.items():
        for key in ("weight", "bias"):
            value = getattr(layer, key)
            if value is not None and not torch.isfinite(value).all():
                return f"layer {name} has non-finite {key}s"
    found: list[str] = []
    hooks = [layer.register_forward_hook(
        lambda module, inputs, output, name=name: found.append(name) if not torch.isfinite(output).all() else None)
        for name, layer in layers.items()]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return f"layer {found[0]} outputs non-finite values" if found else "the loss itself overflows"


class Trainer:
    """The model and everything that moves with it between iterations; one training loop for every stage.

    `stage` and `iteration` say where the run stands: the next iteration to train (iterations count
    from 0 in the reference stage, and from 0 through surgery into fine-tuning, one optimizer run).
    """

    def __init__(self, model: nn.Module, batches: ShuffledBatches, test: Split, cfg: RunConfig, history: History,
                 out_dir: Path):
        self.model, self.batches, self.test, self.cfg, self.history = model, batches, test, cfg, history
        self.out_dir = out_dir
        self.surgeon: Surgeon | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage, self.iteration = "reference", 0
        self.step_count = 0  # iterations over all stages, for the history
        self.reference_error: float | None = None
        self.test_error: float | None = None  # the latest evaluation
        self.wall = {"reference": 0.0, "surgery": 0.0, "finetune": 0.0}
        self.warnings: list[str] = []
        self.signal_received: int | None = None
        self._reset_running_sums()

    def _reset_running_sums(self) -> None:
        # running sums stay on the device: no sync on the steps that log nothing
        device = self.test.images.device
        self.loss_sum = torch.zeros((), device=device)
        self.wrong = torch.zeros((), dtype=torch.long, device=device)
        self.steps = self.seen = 0

    # -- the training loop -------------------------------------------------------------------------
    def run_stage(self, stage: str, base_lr: float, first: int, iters: int) -> None:
        """Train iterations first .. first+iters-1 of `stage`, or what is left of them after a resume."""
        if STAGES.index(self.stage) > STAGES.index(stage):
            return  # done before the resume
        if self.stage != stage:
            self.stage, self.iteration = stage, first
            self._reset_running_sums()
        cfg, surgeon, optimizer = self.cfg, self.surgeon, self.optimizer
        operate = stage == "surgery" and surgeon is not None
        tick = time.perf_counter()
        if iters == 0:
            self.test_error = evaluate(self.model, self.test, cfg.dataset.test_batch_size)
        bar = tqdm(range(self.iteration, first + iters), desc=stage, unit="it", disable=None, dynamic_ncols=True,
                   initial=self.iteration - first, total=iters)
        for it in bar:
            set_learning_rate(optimizer, learning_rate(cfg.lr_policy, base_lr, it))
            if operate:
                surgeon.step(it)
            images, labels = next(self.batches)
            logits = self.model(images)
            loss = nn.functional.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise Stop("failed", f"non-finite loss at {stage} iteration {it}: "
                                     f"{first_non_finite(self.model, images)}", 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            self.loss_sum += loss.detach()
            self.wrong += (logits.argmax(1) != labels).sum()
            self.steps, self.seen = self.steps + 1, self.seen + len(labels)
            self.step_count += 1
            self.iteration = it + 1
            done = it + 1 - first
            evaluated = done % cfg.eval_every == 0 or done == iters
            if evaluated:
                self.test_error = evaluate(self.model, self.test, cfg.dataset.test_batch_size)
                log.info("%s %d/%d: test error %.2f%%", stage, done, iters, 100 * self.test_error)
            if evaluated or done % cfg.log_every == 0:
                self._log_row(stage, it, operate, bar, evaluated)
            if self.signal_received is not None:
                self.wall[stage] += time.perf_counter() - tick
                self.checkpoint()
                name = signal.Signals(self.signal_received).name
                raise Stop("interrupted", f"{name} at {stage} iteration {it + 1}: checkpoint saved, "
                                          f"resume with resume=true hydra.run.dir={self.out_dir}",
                           128 + self.signal_received)
            if cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done != iters:
                self.checkpoint()
        self.wall[stage] += time.perf_counter() - tick

    def _log_row(self, stage: str, it: int, operate: bool, bar: tqdm, evaluated: bool) -> None:
        cfg, surgeon = self.cfg, self.surgeon
        sigma = surgery_probability(it, cfg.surgery.gamma, cfg.surgery.power) if operate else None
        row = self.history.log(stage, self.step_count, it, lr=self.optimizer.param_groups[0]["lr"],
                               loss=(self.loss_sum / self.steps).item(), train_error=self.wrong.item() / self.seen,
                               sigma=sigma, layers=surgeon.layers if surgeon else None,
                               test_error=self.test_error if evaluated else None)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{1 - row['train_error']:.4f}",
                        remaining=f"{row['remaining_pct']:.2f}%", sigma="-" if sigma is None else f"{sigma:.3f}")
        for layer in surgeon.layers if surgeon else []:
            if layer.remaining(("weight",)) == 0:
                message = f"{layer.name} has no weight left at {stage} iteration {it + 1}: the network is cut " \
                          f"there (surgery.min_remaining keeps a fraction)"
                if not any(w.startswith(f"{layer.name} ") for w in self.warnings):
                    log.warning(message)
                    self.warnings.append(message)
        self._reset_running_sums()

    # -- checkpoints -------------------------------------------------------------------------------
    def model_content(self) -> dict[str, Any]:
        """The model part of a checkpoint: dense weights, masks, per-layer surgery settings."""
        return dict(model=self.cfg.model.name, num_classes=self.cfg.dataset.num_classes,
                    state_dict={k: v.cpu() for k, v in plain_state_dict(self.model).items()},
                    masks={k: v.cpu() for k, v in mask_state_dict(self.model).items()},
                    layers=self.surgeon.layer_settings() if self.surgeon else {}, config=asdict(self.cfg))

    def save(self, name: str, stage: str) -> dict[str, Any]:
        """checkpoints/<name>.pt of the model alone (reference.pt, final.pt); returns its content."""
        content = dict(self.model_content(), stage=stage, test_error=self.test_error)
        save_checkpoint(self.out_dir / "checkpoints" / f"{name}.pt", **content)
        return content

    def checkpoint(self) -> None:
        """checkpoints/latest.pt: all a resumed run needs. Refuses non-finite weights, keeping the last good one."""
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                raise Stop("failed", f"non-finite weights at {self.stage} iteration {self.iteration} "
                                     f"({name}); the last good checkpoint is kept", 1)
        resume = {
            "stage": self.stage, "iteration": self.iteration, "step_count": self.step_count,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "batches": self.batches.state_dict(), "rng": rng_states(),
            "gate": self.surgeon.generator.get_state() if self.surgeon else None,
            "history": self.history.state_dict(),
            "running": {"loss_sum": self.loss_sum.cpu(), "wrong": self.wrong.cpu(), "steps": self.steps,
                        "seen": self.seen},
            "reference_error": self.reference_error, "test_error": self.test_error,
            "wall": dict(self.wall), "warnings": list(self.warnings),
        }
        save_checkpoint(self.out_dir / "checkpoints" / "latest.pt", **self.model_content(), stage=self.stage,
                        test_error=self.test_error, resume=resume)

    def load_state(self, resume: dict[str, Any]) -> None:
        """Take up what `checkpoint` saved (the weights and masks are loaded before the surgeon is built)."""
        self.stage, self.iteration, self.step_count = resume["stage"], resume["iteration"], resume["step_count"]
        if resume["optimizer"] is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
        self.batches.load_state_dict(resume["batches"])
        set_rng_states(resume["rng"])
        if resume["gate"] is not None:
            self.surgeon.generator.set_state(resume["gate"])
        running = resume["running"]
        device = self.test.images.device
        self.loss_sum, self.wrong = running["loss_sum"].to(device), running["wrong"].to(device)
        self.steps, self.seen = running["steps"], running["seen"]
        self.reference_error, self.test_error = resume["reference_error"], resume["test_error"]
        self.wall.update(resume["wall"])
        self.warnings = list(resume["warnings"])

    @contextlib.contextmanager
    def catching_signals(self):
        """SIGINT and SIGTERM end the run at the end of the current iteration, with a checkpoint."""
        def note(signum, frame):
            self.signal_received = signum
        previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def report(self, status: str, error: str | None = None, final: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        rows = layer_rows(self.surgeon) if self.surgeon else []
        for row in rows:
            row["cut"] = row["weight_remaining"] == 0
        report = {
            "model": cfg.model.name, "dataset": cfg.dataset.name, "status": status, "config": asdict(cfg),
            "layers": rows, "total": totals(rows) if rows else None,
            "test": {"reference_error": self.reference_error, "final_error": self.test_error},
            "iterations": {"reference": 0 if cfg.reference.checkpoint else cfg.reference.iters,
                           "surgery": cfg.surgery.iters, "finetune": cfg.finetune.iters},
            "stopped_at": None if status == "completed" else {"stage": self.stage, "iteration": self.iteration},
            "wall_seconds": {k: round(v, 3) for k, v in {**self.wall, "total": sum(self.wall.values())}.items()},
            "warnings": self.warnings,
        }
        if final is not None:
            report["bytes"] = byte_report(final)
        if error is not None:
            report["error"] = error
        return report


def run(cfg: RunConfig, out_dir: Path) -> dict:
    """Run (or, with cfg.resume, go on with) every stage of `cfg`, writing reports, history, plots and
    checkpoints into `out_dir`. A run that stops early raises `Stop` after writing its report."""
    latest = out_dir / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest) if cfg.resume and latest.is_file() else None
    if cfg.resume and state is None:
        log.info("resume: no checkpoint in %s yet, starting from the beginning", out_dir)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    train_split = load_split(cfg.dataset, train=True).to(device)
    test_split = load_split(cfg.dataset, train=False).to(device)
    model = get_model(cfg.model.name, num_classes=cfg.dataset.num_classes).to(device)
    resume = state["resume"] if state else None
    history = History(out_dir / "history.csv", list(prunable_layers(model)), resume["history"] if resume else None)
    trainer = Trainer(model, ShuffledBatches(train_split, cfg.dataset.batch_size, cfg.seed), test_split, cfg,
                      history, out_dir)
    try:
        with trainer.catching_signals():
            final = stages(trainer, cfg, state)
        report = trainer.report("completed", final=final)
    except Stop as stop:
        log.error("%s", stop)
        write_reports(out_dir, trainer.report(stop.status, error=str(stop)))
        raise
    except Exception as e:  # a bug or a broken device: report it, then let it surface
        write_reports(out_dir, trainer.report("failed", error=f"{type(e).__name__}: {e}"))
        raise
    finally:
        history.close()
    write_reports(out_dir, report)
    return report


def stages(trainer: Trainer, cfg: RunConfig, state: dict[str, Any] | None) -> dict[str, Any]:
    """The three stages, from the beginning or from `state` (a latest.pt); returns the final checkpoint's content."""
    model = trainer.model
    surgery_lr = cfg.surgery.lr if cfg.surgery.lr is not None else cfg.optimizer.lr
    finetune_lr = cfg.finetune.lr if cfg.finetune.lr is not None else surgery_lr
    if state is not None:
        model.load_state_dict(state["state_dict"])

    # (1) the dense reference: trained here, or loaded
    if state is None or state["resume"]["stage"] == "reference":
        initial_masks = None
        if cfg.reference.checkpoint is not None:
            reference = load_checkpoint(cfg.reference.checkpoint)  # validate() checked it fits the model
            model.load_state_dict(reference["state_dict"])
            initial_masks = reference.get("masks") or None
        else:
            trainer.optimizer = build_optimizer(model, cfg.optimizer, cfg.optimizer.lr)
            if state is not None:
                trainer.load_state(state["resume"])
            trainer.run_stage("reference", cfg.optimizer.lr, 0, cfg.reference.iters)
        trainer.surgeon = build_surgeon(model, cfg, initial_masks)
        trainer.reference_error = trainer.test_error = evaluate(model, trainer.test, cfg.dataset.test_batch_size)
        trainer.save("reference", "reference")
        log.info("reference: test error %.2f%%", 100 * trainer.reference_error)
        trainer.surgeon.start()
        trainer.optimizer = build_optimizer(model, cfg.optimizer, surgery_lr)
        trainer.stage, trainer.iteration = "surgery", 0
        trainer._reset_running_sums()
        trainer.checkpoint()
    else:  # resumed after the reference: the surgeon takes up the checkpoint's masks and thresholds
        trainer.surgeon = build_surgeon(model, cfg, state["masks"])
        trainer.surgeon.load_layer_settings(state["layers"])
        trainer.optimizer = build_optimizer(model, cfg.optimizer, surgery_lr)
        trainer.load_state(state["resume"])

    # (2) surgery and (3) fine-tuning are one optimizer run, as in the authors' Caffe runs where
    # iter_stop freezes the masks partway: the learning rate and momentum carry on into fine-tuning.
    trainer.run_stage("surgery", surgery_lr, 0, cfg.surgery.iters)
    if trainer.stage == "surgery":
        trainer.stage, trainer.iteration = "finetune", cfg.surgery.iters
        trainer.checkpoint()
    trainer.run_stage("finetune", finetune_lr, cfg.surgery.iters, cfg.finetune.iters)
    final = trainer.save("final", "final")
    if trainer.stage != "done":
        trainer.stage = "done"
        trainer.checkpoint()
    return final
