"""One DNS run: (1) dense reference, (2) surgery, (3) fine-tuning with frozen masks; then the reports."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
                   seed=cfg.seed + 1, initial_masks=initial_masks)


class Trainer:
    """The training loop shared by the three stages; surgery is one visible call inside the step."""

    def __init__(self, model: nn.Module, batches: ShuffledBatches, test: Split, cfg: RunConfig, history: History):
        self.model, self.batches, self.test, self.cfg, self.history = model, batches, test, cfg, history
        self.surgeon: Surgeon | None = None
        self.step_count = 0  # iterations over all stages, for the history

    def run_stage(self, stage: str, optimizer: torch.optim.Optimizer, base_lr: float,
                  first: int, iters: int) -> float:
        """Train iterations first .. first+iters-1 of an optimizer run; returns the final test error."""
        cfg, surgeon = self.cfg, self.surgeon
        if iters == 0:
            return evaluate(self.model, self.test, cfg.dataset.test_batch_size)
        operate = stage == "surgery" and surgeon is not None
        device = self.test.images.device
        loss_sum, wrong = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        steps = seen = 0
        bar = tqdm(range(first, first + iters), desc=stage, unit="it", disable=None, dynamic_ncols=True)
        for it in bar:
            set_learning_rate(optimizer, learning_rate(cfg.lr_policy, base_lr, it))
            if operate:
                surgeon.step(it)
            images, labels = next(self.batches)
            logits = self.model(images)
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # running sums stay on the device: no sync on the steps that log nothing
            loss_sum += loss.detach()
            wrong += (logits.argmax(1) != labels).sum()
            steps, seen = steps + 1, seen + len(labels)
            self.step_count += 1
            done = it + 1 - first
            evaluated = done % cfg.eval_every == 0 or done == iters
            if evaluated:
                test_error = evaluate(self.model, self.test, cfg.dataset.test_batch_size)
                log.info("%s %d/%d: test error %.2f%%", stage, done, iters, 100 * test_error)
            if evaluated or done % cfg.log_every == 0:
                sigma = surgery_probability(it, cfg.surgery.gamma, cfg.surgery.power) if operate else None
                row = self.history.log(stage, self.step_count, it, lr=optimizer.param_groups[0]["lr"],
                                       loss=(loss_sum / steps).item(), train_error=wrong.item() / seen,
                                       sigma=sigma, layers=surgeon.layers if surgeon else None,
                                       test_error=test_error if evaluated else None)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{1 - row['train_error']:.4f}",
                                remaining=f"{row['remaining_pct']:.2f}%",
                                sigma="-" if sigma is None else f"{sigma:.3f}")
                loss_sum.zero_(), wrong.zero_()
                steps = seen = 0
        return test_error


def run(cfg: RunConfig, out_dir: Path) -> dict:
    """Run every stage of `cfg`, writing reports, history, plots and checkpoints into `out_dir`."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    train_split = load_split(cfg.dataset, train=True).to(device)
    test_split = load_split(cfg.dataset, train=False).to(device)
    model = get_model(cfg.model.name, num_classes=cfg.dataset.num_classes).to(device)
    history = History(out_dir / "history.csv", list(prunable_layers(model)))
    trainer = Trainer(model, ShuffledBatches(train_split, cfg.dataset.batch_size, cfg.seed), test_split, cfg, history)
    wall: dict[str, float] = {}
    iterations = {"reference": cfg.reference.iters, "surgery": cfg.surgery.iters, "finetune": cfg.finetune.iters}

    # (1) the dense reference: trained here, or loaded
    tick = time.perf_counter()
    initial_masks = None
    if cfg.reference.checkpoint is not None:
        reference = load_checkpoint(cfg.reference.checkpoint)  # validate() checked it fits the model
        model.load_state_dict(reference["state_dict"])
        initial_masks = reference.get("masks") or None
        iterations["reference"] = 0
    else:
        optimizer = build_optimizer(model, cfg.optimizer, cfg.optimizer.lr)
        trainer.run_stage("reference", optimizer, cfg.optimizer.lr, 0, cfg.reference.iters)
    trainer.surgeon = surgeon = build_surgeon(model, cfg, initial_masks)
    reference_error = evaluate(model, test_split, cfg.dataset.test_batch_size)
    wall["reference"] = time.perf_counter() - tick
    save(out_dir / "checkpoints" / "reference.pt", cfg, model, surgeon, "reference", reference_error)
    log.info("reference: test error %.2f%%", 100 * reference_error)

    # (2) surgery and (3) fine-tuning are one optimizer run, as in the authors' Caffe runs where
    # iter_stop freezes the masks partway: the learning rate and momentum carry on into fine-tuning.
    tick = time.perf_counter()
    surgeon.start()
    base_lr = cfg.surgery.lr if cfg.surgery.lr is not None else cfg.optimizer.lr
    optimizer = build_optimizer(model, cfg.optimizer, base_lr)
    final_error = trainer.run_stage("surgery", optimizer, base_lr, 0, cfg.surgery.iters)
    wall["surgery"] = time.perf_counter() - tick
    tick = time.perf_counter()
    if cfg.finetune.iters > 0:
        final_error = trainer.run_stage("finetune", optimizer, base_lr, cfg.surgery.iters, cfg.finetune.iters)
    wall["finetune"] = time.perf_counter() - tick
    final = save(out_dir / "checkpoints" / "final.pt", cfg, model, surgeon, "final", final_error)
    wall["total"] = time.perf_counter() - started

    history.close()
    rows = layer_rows(surgeon)
    report = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "status": "completed",
        "config": asdict(cfg),
        "layers": rows,
        "total": totals(rows),
        "test": {"reference_error": reference_error, "final_error": final_error},
        "bytes": byte_report(final),
        "iterations": iterations,
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
    }
    write_reports(out_dir, report)
    return report


def save(path: Path, cfg: RunConfig, model: nn.Module, surgeon: Surgeon, stage: str, test_error: float) -> dict:
    """Write a checkpoint of the run; returns its content."""
    content = dict(model=cfg.model.name, num_classes=cfg.dataset.num_classes,
                   state_dict={k: v.cpu() for k, v in plain_state_dict(model).items()},
                   masks={k: v.cpu() for k, v in mask_state_dict(model).items()},
                   layers=surgeon.layer_settings(), stage=stage, test_error=test_error, config=asdict(cfg))
    save_checkpoint(path, **content)
    return content
