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
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dns import distributed
from dns.baselines import GradualMagnitude, Han
from dns.checkpoint import load_checkpoint, save_checkpoint
from dns.config import RunConfig, model_args
from dns.data import SplitBatches, augmentation, load_split
from dns.evaluate import TestFn, evaluator
from dns.export import byte_report, checkpoint_of
from dns.masks import plain_state_dict
from dns.models import get_model, layer_kind, prunable_layers
from dns.optim import anneal, build_optimizer, learning_rate, set_learning_rate, set_weight_decay
from dns.report import History, dense_rows, error_change, layer_rows, totals, write_reports
from dns.surgeon import Phase, Surgeon, surgery_phases
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


def build_surgeon(model: nn.Module, cfg: RunConfig, phase: Phase | None, initial_masks: dict | None) -> Surgeon:
    """Masks on every prunable layer, operating on `phase`'s layers (None: none yet; `Surgeon.begin_phase`): DNS's
    surgeon, or the baseline of cfg.method (`dns.baselines`), whose per-layer settings `phase.c` holds."""
    s, m = cfg.surgery, cfg.method
    phase = phase or Phase(0, 0, {}, {}, s.gamma, s.power)
    shared = dict(layers=list(phase.c), prune_bias=s.prune_bias, masks=initial_masks)
    if m.name == "han":
        return Han(model, quality_per_layer=phase.c, rounds=m.rounds, round_iters=m.round_iters, **shared)
    if m.name == "gmp":
        return GradualMagnitude(model, m.final_sparsity, final_sparsity_per_layer=None if m.global_sparsity else phase.c,
                                initial_sparsity=m.initial_sparsity, start=m.start, end=m.end, every=m.every,
                                global_sparsity=m.global_sparsity, **shared)
    return Surgeon(model, c_per_layer=phase.c, iter_stop_per_layer=phase.iter_stop, margin=s.margin,
                   gamma=phase.gamma, power=phase.power, splice=s.splice, min_remaining=s.min_remaining,
                   min_remaining_per_layer=s.min_remaining_per_layer, seed=cfg.seed + 1, **shared)


def method_label(cfg: RunConfig) -> str:
    """The method that made a run, as reports name it: dns, dns-nosplice, han or gmp."""
    return "dns-nosplice" if cfg.method.name == "dns" and not cfg.surgery.splice else cfg.method.name


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


def build_data(cfg: RunConfig, device: torch.device, rank: int, world_size: int) -> tuple[Iterator, TestFn]:
    """Endless training batches (this rank's share) and the test-set evaluation of the configured dataset."""
    d = cfg.dataset
    if d.name == "imagenet":
        from dns.imagenet import ImageFolderBatches

        batches = ImageFolderBatches(Path(d.root) / "train", d.batch_size, cfg.seed, d.image_size, d.workers,
                                     rank, world_size, d.pixels)
    else:
        batches = SplitBatches(load_split(d, train=True).to(device), d.batch_size, cfg.seed, rank, world_size,
                               d.shuffle, d.max_shift, augmentation(d))
    return batches, evaluator(d, device)


class Trainer:
    """The model and everything that moves with it between iterations; one training loop for every stage.

    `stage` and `iteration` say where the run stands: the next iteration to train (iterations count
    from 0 in the reference stage, and from 0 through surgery into fine-tuning).
    """

    def __init__(self, model: nn.Module, batches: Iterator, test: TestFn, cfg: RunConfig, history: History,
                 out_dir: Path, device: torch.device, main: bool = True):
        self.model, self.batches, self.test, self.cfg, self.history = model, batches, test, cfg, history
        self.out_dir, self.device = out_dir, device
        self.main = main  # rank 0 (or the only process): the one that writes files
        self.net = distributed.wrap(model, device)  # what the step calls: DDP in a distributed run
        self.surgeon: Surgeon | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage, self.iteration = "reference", 0
        self.phase = -1  # the surgery phase begun last
        self.phases: list[dict[str, Any]] = []  # what each finished phase left
        self.step_count = 0  # iterations over all stages, for the history
        self.reference_error: float | None = None
        self.reference_top5: float | None = None
        self.test_error: float | None = None  # the latest evaluation: top-1, and top-5 where measured
        self.test_top5: float | None = None
        self.wall = {"reference": 0.0, "surgery": 0.0, "finetune": 0.0}
        self.warnings: list[str] = []
        self.signal_received: int | None = None
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp)
        self._reset_running_sums()

    def _reset_running_sums(self) -> None:
        # running sums stay on the device: no sync on the steps that log nothing
        self.loss_sum = torch.zeros((), device=self.device)
        self.wrong = torch.zeros((), dtype=torch.long, device=self.device)
        self.steps = self.seen = 0

    def evaluate(self) -> None:
        errors = self.test(self.model)
        self.test_error, self.test_top5 = errors["top1"], errors.get("top5")

    # -- the training loop -------------------------------------------------------------------------
    def run_stage(self, stage: str, base_lr: float, first: int, iters: int, phase: Phase | None = None,
                  shape: str = "none", origin: int = 0) -> None:
        """Train iterations first .. first+iters-1 of `stage` (of `phase`, in surgery), or what is left of
        them after a resume; the learning-rate policy counts from iteration `origin`, and `shape` anneals the
        rate over the stage (`dns.optim.anneal`)."""
        if STAGES.index(self.stage) > STAGES.index(stage):
            return  # done before the resume
        if self.stage != stage:
            self.stage, self.iteration = stage, first
            self._reset_running_sums()
        if iters > 0 and self.iteration >= first + iters:
            return  # a phase done before the resume
        cfg, surgeon, optimizer = self.cfg, self.surgeon, self.optimizer
        operate = phase is not None and surgeon is not None
        tick = time.perf_counter()
        if iters == 0:
            self.evaluate()
        bar = tqdm(range(self.iteration, first + iters), desc=stage if phase is None else f"{stage} {phase.label}",
                   unit="it", disable=None if self.main else True, dynamic_ncols=True,
                   initial=self.iteration - first, total=iters)
        for it in bar:
            set_learning_rate(optimizer, learning_rate(cfg.lr_policy, base_lr, it - origin)
                              * anneal(shape, it - first, iters))
            if operate:
                surgeon.step(it - phase.first, optimizer)
            images, labels = next(self.batches)
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(**self.autocast):
                logits = self.net(images)
                loss = nn.functional.cross_entropy(logits.float(), labels)
            if distributed.any_rank(not torch.isfinite(loss), self.device):
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
                self.evaluate()
                log.info("%s %d/%d: test error %.2f%%", stage, done, iters, 100 * self.test_error)
            if evaluated or done % cfg.log_every == 0:
                self._log_row(stage, it, phase if operate else None, bar, evaluated)
            if distributed.any_rank(self.signal_received is not None, self.device):
                self.wall[stage] += time.perf_counter() - tick
                self.checkpoint()
                signum = self.signal_received or signal.SIGTERM  # another rank's signal stops this one too
                raise Stop("interrupted", f"{signal.Signals(signum).name} at {stage} iteration {it + 1}: checkpoint "
                                          f"saved, resume with resume=true hydra.run.dir={self.out_dir}", 128 + signum)
            if cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done != iters:
                self.checkpoint()
        self.wall[stage] += time.perf_counter() - tick

    def _log_row(self, stage: str, it: int, phase: Phase | None, bar: tqdm, evaluated: bool) -> None:
        cfg, surgeon = self.cfg, self.surgeon
        sigma = surgery_probability(it - phase.first, phase.gamma, phase.power) \
            if phase and cfg.method.name == "dns" else None
        row = self.history.log(stage, self.step_count, it, lr=self.optimizer.param_groups[0]["lr"],
                               loss=(self.loss_sum / self.steps).item(), train_error=self.wrong.item() / self.seen,
                               sigma=sigma, layers=surgeon.layers if surgeon else None,
                               test_error=self.test_error if evaluated else None,
                               phase=phase.label if phase and len(cfg.surgery.phases) > 1 else None)
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

    def begin_phase(self, index: int, phase: Phase) -> None:
        """Phase `index` of the surgery starts now: its layers' thresholds are fixed from their weights."""
        self.surgeon.begin_phase(phase.c, phase.iter_stop, phase.gamma, phase.power)
        self.phase = index
        log.info("surgery phase %d: %s for %d iterations", index + 1, phase.label, phase.iters)

    def end_phase(self, index: int, phase: Phase) -> None:
        """Record what phase `index` left, once."""
        if len(self.phases) > index:
            return
        self.phases.append({"layers": list(phase.c), "iters": phase.iters, "c": phase.c, "gamma": phase.gamma,
                            "power": phase.power, "test_error": self.test_error,
                            "remaining_pct": {row["name"]: row["remaining_pct"] for row in layer_rows(self.surgeon)}})

    # -- checkpoints -------------------------------------------------------------------------------
    def model_content(self) -> dict[str, Any]:
        """The model part of a checkpoint: dense weights, masks, per-layer surgery settings."""
        return dict(checkpoint_of(self.model), model=self.cfg.model.name, num_classes=self.cfg.dataset.num_classes,
                    model_args=model_args(self.cfg, weights=False),
                    layers=self.surgeon.layer_settings() if self.surgeon else {}, config=asdict(self.cfg))

    def save(self, name: str, stage: str) -> dict[str, Any]:
        """checkpoints/<name>.pt of the model alone (reference.pt, final.pt); returns its content."""
        content = dict(self.model_content(), stage=stage, test_error=self.test_error)
        if self.main:
            save_checkpoint(self.out_dir / "checkpoints" / f"{name}.pt", **content)
        return content

    def checkpoint(self) -> None:
        """checkpoints/latest.pt: all a resumed run needs. Refuses non-finite weights, keeping the last good one."""
        for name, param in plain_state_dict(self.model).items():
            if param.is_floating_point() and not torch.isfinite(param).all():
                raise Stop("failed", f"non-finite weights at {self.stage} iteration {self.iteration} "
                                     f"({name}); the last good checkpoint is kept", 1)
        if not self.main:
            return
        resume = {
            "stage": self.stage, "iteration": self.iteration, "step_count": self.step_count,
            "phase": self.phase, "phases": list(self.phases),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "batches": self.batches.state_dict(), "rng": rng_states(),
            "gate": self.surgeon.draws.state_dict() if self.surgeon else None,
            "history": self.history.state_dict(),
            "running": {"loss_sum": self.loss_sum.cpu(), "wrong": self.wrong.cpu(), "steps": self.steps,
                        "seen": self.seen},
            "reference_error": self.reference_error, "reference_top5": self.reference_top5,
            "test_error": self.test_error, "test_top5": self.test_top5,
            "wall": dict(self.wall), "warnings": list(self.warnings),
        }
        save_checkpoint(self.out_dir / "checkpoints" / "latest.pt", **self.model_content(), stage=self.stage,
                        test_error=self.test_error, resume=resume)

    def load_state(self, resume: dict[str, Any]) -> None:
        """Take up what `checkpoint` saved (the weights and masks are loaded before the surgeon is built)."""
        self.stage, self.iteration, self.step_count = resume["stage"], resume["iteration"], resume["step_count"]
        self.phase, self.phases = resume["phase"], list(resume["phases"])
        if resume["optimizer"] is not None:
            self.optimizer.load_state_dict(resume["optimizer"])
        self.batches.load_state_dict(resume["batches"])
        set_rng_states(resume["rng"])
        if resume["gate"] is not None:
            self.surgeon.draws.load_state_dict(resume["gate"])
        running = resume["running"]
        self.loss_sum, self.wrong = running["loss_sum"].to(self.device), running["wrong"].to(self.device)
        self.steps, self.seen = running["steps"], running["seen"]
        self.reference_error, self.reference_top5 = resume["reference_error"], resume["reference_top5"]
        self.test_error, self.test_top5 = resume["test_error"], resume["test_top5"]
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
        dense = dense_rows(self.surgeon) if self.surgeon else []
        for row in rows:
            row["cut"] = row["weight_remaining"] == 0
        test = {"reference_error": self.reference_error, "final_error": self.test_error,
                "error_change": error_change(self.reference_error, self.test_error)}
        if self.test_top5 is not None:
            test.update(reference_top5_error=self.reference_top5, final_top5_error=self.test_top5)
        report = {
            "model": cfg.model.name, "arch": cfg.model.arch, "dataset": cfg.dataset.name,
            "method": method_label(cfg), "status": status, "config": asdict(cfg),
            "layers": rows, "dense_layers": dense, "total": totals(rows, dense) if rows else None, "test": test,
            "iterations": {"reference": 0 if cfg.reference.checkpoint else cfg.reference.iters,
                           "surgery": cfg.surgery.iters, "finetune": cfg.finetune.iters},
            "phases": self.phases if len(cfg.surgery.phases) > 1 else None,
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
    checkpoints into `out_dir`. A run that stops early raises `Stop` after writing its report.

    Under torchrun every rank runs this; rank 0 alone writes.
    """
    latest = out_dir / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest) if cfg.resume and latest.is_file() else None
    if cfg.resume and state is None:
        log.info("resume: no checkpoint in %s yet, starting from the beginning", out_dir)
    threads = torch.get_num_threads()  # restored at the end: the next job of a sweep may run in this process
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    rank, world_size = distributed.world()
    device = pick_device(cfg.device)
    if world_size > 1:
        device = distributed.start(device)
    seed_everything(cfg.seed)
    batches, test = build_data(cfg, device, rank, world_size)
    model = get_model(cfg.model.name, **model_args(cfg)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    resume = state["resume"] if state else None
    main = rank == 0
    history = History(out_dir / "history.csv" if main else None, list(prunable_layers(model)),
                      resume["history"] if resume else None)
    trainer = Trainer(model, batches, test, cfg, history, out_dir, device, main)
    try:
        with trainer.catching_signals():
            final = stages(trainer, cfg, state)
        report = trainer.report("completed", final=final)
        if world_size > 1:
            report["distributed"] = {"world_size": world_size, "ranks_identical": distributed.ranks_agree(model)}
    except Stop as stop:
        log.error("%s", stop)
        if main:
            write_reports(out_dir, trainer.report(stop.status, error=str(stop)))
        raise
    except Exception as e:  # a bug or a broken device: report it, then let it surface
        if main:
            write_reports(out_dir, trainer.report("failed", error=f"{type(e).__name__}: {e}"))
        raise
    finally:
        history.close()
        distributed.stop()
        torch.set_num_threads(threads)
    if main:
        write_reports(out_dir, report)
    return report


def stages(trainer: Trainer, cfg: RunConfig, state: dict[str, Any] | None) -> dict[str, Any]:
    """The three stages, from the beginning or from `state` (a latest.pt); returns the final checkpoint's content."""
    model = trainer.model
    surgery_lr = cfg.surgery.lr if cfg.surgery.lr is not None else cfg.optimizer.lr
    if cfg.method.name == "han":  # retraining at a tenth of the rate, as Han et al. retrained the LeNets
        surgery_lr = cfg.method.lr if cfg.method.lr is not None else cfg.optimizer.lr / 10
    finetune_lr = cfg.finetune.lr if cfg.finetune.lr is not None else surgery_lr

    def surgery_optimizer() -> torch.optim.Optimizer:  # at the start of surgery, of each restarted phase, on resume
        return build_optimizer(model, cfg.optimizer, surgery_lr, cfg.surgery.weight_decay)
    phases = surgery_phases(cfg, {name: layer_kind(m) for name, m in prunable_layers(model).items()})
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
        trainer.surgeon = build_surgeon(model, cfg, None, initial_masks)  # reference.pt: masks, no thresholds
        trainer.evaluate()
        trainer.reference_error, trainer.reference_top5 = trainer.test_error, trainer.test_top5
        trainer.save("reference", "reference")
        log.info("reference: test error %.2f%%", 100 * trainer.reference_error)
        trainer.begin_phase(0, phases[0])
        trainer.optimizer = surgery_optimizer()
        trainer.stage, trainer.iteration = "surgery", 0
        trainer._reset_running_sums()
        trainer.checkpoint()
    else:  # resumed after the reference: the surgeon takes up the checkpoint's masks and thresholds
        trainer.surgeon = build_surgeon(model, cfg, phases[state["resume"]["phase"]], state["masks"])
        trainer.surgeon.load_layer_settings(state["layers"])
        trainer.optimizer = surgery_optimizer()
        trainer.load_state(state["resume"])

    # (2) surgery, phase by phase, and (3) fine-tuning: the last phase and fine-tuning are one optimizer run, as in
    # the authors' Caffe runs where iter_stop freezes the masks partway (the learning rate and momentum carry on);
    # each earlier phase is a solver run of its own (surgery.phase_restart=false: all phases one run).
    restart = cfg.surgery.phase_restart
    origin = 0  # the iteration the learning-rate policy counts from
    for index, phase in enumerate(phases):
        origin = phase.first if restart else 0
        if trainer.stage == "surgery" and index > trainer.phase:
            trainer.begin_phase(index, phase)
            if restart and index > 0:  # momentum from 0
                trainer.optimizer = surgery_optimizer()
            trainer.checkpoint()
        trainer.run_stage("surgery", surgery_lr, phase.first, phase.iters, phase, origin=origin)
        trainer.end_phase(index, phase)
    if trainer.stage == "surgery":
        trainer.stage, trainer.iteration = "finetune", cfg.surgery.iters
        trainer.checkpoint()
    if cfg.finetune.weight_decay is not None:  # set again on every resume: the optimizer was rebuilt with surgery's
        set_weight_decay(trainer.optimizer, cfg.finetune.weight_decay)
    trainer.run_stage("finetune", finetune_lr, cfg.surgery.iters, cfg.finetune.iters, shape=cfg.finetune.anneal,
                      origin=origin)  # the last phase's
    final = trainer.save("final", "final")
    if trainer.stage != "done":
        trainer.stage = "done"
        trainer.checkpoint()
    return final
