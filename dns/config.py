"""Typed schemas of the run configuration, registered in Hydra's ConfigStore.

The YAML files in conf/ hold the values; these dataclasses give their types, so a wrong type fails at
override time, and `validate` runs the range checks before any work (OmegaConf does not run them).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration a run cannot start with; its message says what is wrong and how to fix it."""


def layer_dict(value_type: type):
    """A typed {layer name: value} field to which `key={conv1: 2}` overrides may add keys.

    Hydra puts the whole config in struct mode, which would refuse new keys in an empty dict;
    the node's own struct flag, set off here, takes precedence over the root's.
    """
    return field(default_factory=lambda: DictConfig({}, key_type=str, element_type=value_type,
                                                    flags={"struct": False}))


@dataclass
class ModelConfig:
    name: str = MISSING  # a name of dns.models.list_models()
    arch: Optional[str] = None  # torchvision: a classification builder of torchvision.models (resnet18, vgg16, ...)
    weights: Optional[str] = None  # torchvision: a local state_dict file to start from (nothing is downloaded)


@dataclass
class DatasetConfig:
    name: str = MISSING  # mnist | fashion_mnist | cifar10 | cifar100 | imagenet
    root: str = "${oc.env:DNS_DATA,./data}"  # torchvision's layout: <Name>/raw/, cifar-10-batches-py/, ... (imagenet: train/, val/)
    download: bool = True
    batch_size: int = 64
    shuffle: bool = True  # False: file order every epoch, as Caffe reads its LMDB (mnist, fashion_mnist)
    max_shift: int = 0  # mnist, fashion_mnist: training images moved by up to this many pixels (augmentation)
    augment: bool = True  # cifar10, cifar100: random 32x32 crops of the 4-pixel zero-padded image, horizontal flips
    test_batch_size: int = 1000
    num_classes: int = 10
    workers: int = 4  # imagenet: DataLoader worker processes that decode and augment the images
    image_size: int = 227  # imagenet: side of the square crops the model takes
    resize_size: int = 256  # imagenet: evaluation images are resized to this shorter side, then centre-cropped
    pixels: str = "torchvision"  # imagenet: torchvision (RGB, mean/std) | caffe (BGR 0-255 minus the mean pixel)


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd: torch.optim.SGD | caffe_sgd: Caffe's update, lr inside the momentum
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_mult: float = 1.0  # Caffe's LeNet solver trains biases at twice the learning rate


@dataclass
class LRPolicyConfig:
    name: str = "inv"  # fixed | inv: lr·(1 + gamma·i)^(-power) | step: lr·gamma^floor(i / step_size)
    gamma: float = 1e-4  # | multistep: lr·gamma^(number of milestones <= i)
    power: float = 0.75
    step_size: int = 1
    milestones: List[int] = field(default_factory=list)  # multistep: iterations at which lr is multiplied by gamma


@dataclass
class ReferenceConfig:
    iters: int = 10000  # iterations to train the dense reference (ignored with `checkpoint`)
    checkpoint: Optional[str] = None  # start from this checkpoint instead of training
    surgery_settings: bool = False  # take per-layer c, iter_stop, gamma, power from the checkpoint, where
    # the surgery settings leave them at their defaults (what you set wins)


@dataclass
class PhaseConfig:
    """One step of a phased surgery: its layers, iterations and settings (unset: the surgery's)."""

    layers: Any = "all"  # all | conv | fc | a list of those and layer names
    iters: int = 0
    c: Optional[float] = None
    c_per_layer: Dict[str, float] = layer_dict(float)
    iter_stop: Optional[int] = None  # iteration of this phase from which its masks are frozen (None: its end)
    gamma: Optional[float] = None
    power: Optional[float] = None


@dataclass
class SurgeryConfig:
    iters: int = 14000
    c: float = 1.0  # every layer's c: thr = max(mu + c·sigma, 0)
    c_per_layer: Dict[str, float] = layer_dict(float)  # {fc1: 4, ...} overrides c
    iter_stop: Optional[int] = None  # masks frozen from this surgery iteration on (None: never)
    iter_stop_per_layer: Dict[str, int] = layer_dict(int)
    margin: float = 0.1  # a = (1 - margin)·thr, b = (1 + margin)·thr
    gamma: float = 1e-4  # gate sigma(i) = (1 + gamma·i)^(-power)
    power: float = 1.0
    prune_bias: bool = True
    splice: bool = True  # false: masks only go from 1 to 0 (the paper's ablation, DNS without splicing)
    layers: Any = "all"  # all | conv | fc | a list of those, layer names and glob patterns (layer3.*)
    exclude: Any = field(default_factory=list)  # layers never under surgery, given the same way: [conv1,fc]
    min_remaining: float = 0.0  # fraction of each layer's weights always kept (the largest |w|), so none is cut
    min_remaining_per_layer: Dict[str, float] = layer_dict(float)  # {fc3: 0.05, ...} overrides min_remaining
    # phases one after the other (e.g. conv, then fc); the other layers keep their masks meanwhile.
    # Empty: one phase of all of the above. Given: surgery.iters is the sum of their iters.
    phases: List[PhaseConfig] = field(default_factory=list)
    # each phase a fresh solver, as the authors pruned AlexNet's groups in separate runs: the learning-rate
    # schedule counts from the phase's start and the momentum starts at 0 (fine-tuning goes on with the last
    # phase's). false: one solver run from the first phase to the end of fine-tuning.
    phase_restart: bool = True
    lr: Optional[float] = None  # base learning rate of surgery and fine-tuning (None: optimizer.lr)
    weight_decay: Optional[float] = None  # weight decay of surgery and fine-tuning (None: optimizer.weight_decay)


@dataclass
class MethodConfig:
    """method=dns (the default): Dynamic Network Surgery, set by `surgery`."""

    name: str = "dns"


@dataclass
class HanConfig(MethodConfig):
    """method=han: Han et al. 2015, rounds of pruning at quality × std of each layer's weights, then retraining
    with the pruned weights held at zero (dns.baselines.Han). surgery.iters becomes rounds × round_iters."""

    name: str = "han"
    quality: float = 1.0  # the final round prunes |w| <= quality·std of the layer's weights; round r at r/rounds of it
    quality_per_layer: Dict[str, float] = layer_dict(float)  # {fc1: 2.5, ...} overrides quality
    rounds: int = 3
    round_iters: int = 4000  # iterations of each round: one pruning step, then retraining
    lr: Optional[float] = None  # base learning rate of retraining (None: optimizer.lr / 10, Han's LeNet setting)


@dataclass
class GMPConfig(MethodConfig):
    """method=gmp: gradual magnitude pruning (Zhu & Gupta 2017), dns.baselines.GradualMagnitude, during the
    surgery stage; fine-tuning follows with the masks frozen."""

    name: str = "gmp"
    final_sparsity: float = 0.9  # s_f: the fraction of each layer's weights (and biases) pruned in the end
    final_sparsity_per_layer: Dict[str, float] = layer_dict(float)  # {fc1: 0.99, ...} overrides final_sparsity
    initial_sparsity: float = 0.0  # s_i, at the first pruning step
    start: int = 0  # t0: the surgery iteration of the first pruning step
    end: Optional[int] = None  # the last pruning step, where s_f is reached: start + k·every (None: the stage's last one)
    every: int = 100  # Δt: iterations between pruning steps
    global_sparsity: bool = False  # one threshold over all the layers, pruning final_sparsity of them together


METHODS = {"dns": MethodConfig, "han": HanConfig, "gmp": GMPConfig}


@dataclass
class FinetuneConfig:
    iters: int = 2000  # masks frozen; continues the surgery run's optimizer and learning rate
    lr: Optional[float] = None  # base learning rate from here on, same policy and counter (None: surgery's)
    weight_decay: Optional[float] = None  # from here on (None: surgery's); masks are frozen, so it moves no mask
    anneal: str = "none"  # none | linear | cosine: the learning rate falls to 0 over fine-tuning (times lr_policy's)


@dataclass
class CheckpointConfig:
    every: int = 1000  # iterations between resumable checkpoints (checkpoints/latest.pt); 0: stage ends only


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    lr_policy: LRPolicyConfig = MISSING
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    method: Any = field(default_factory=MethodConfig)  # dns | han | gmp: a MethodConfig of METHODS (conf/method/)
    resume: bool = False  # go on from checkpoints/latest.pt of the run directory named by hydra.run.dir
    overwrite: bool = False  # start afresh in a run directory that holds a run, removing what that run wrote
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # CUDA: bfloat16 autocast for the forward pass and the loss
    channels_last: bool = False  # CUDA: NHWC memory layout for convolutional models
    log_every: int = 100  # iterations between history rows
    eval_every: int = 1000  # iterations between test-set evaluations (and at the end of each stage)
    threads: Optional[int] = None  # torch's CPU threads (null: its default; a joblib sweep shares the cores)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="dataset", name="base_dataset", node=DatasetConfig)
    cs.store(group="optimizer", name="base_optimizer", node=OptimizerConfig)
    cs.store(group="lr_policy", name="base_lr_policy", node=LRPolicyConfig)
    for name, schema in METHODS.items():
        cs.store(group="method", name=f"base_{name}", node=schema)


OPTIMIZERS = ("sgd", "caffe_sgd")
LR_POLICIES = ("fixed", "inv", "step", "multistep")
ANNEALS = ("none", "linear", "cosine")
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet")
MNIST_LIKE = ("mnist", "fashion_mnist")
MNIST_MARGIN = 4  # pixels between the 20x20 box MNIST centres each digit in and the edges of the 28x28 image


def sample_shape(dataset: DatasetConfig) -> tuple[int, int, int]:
    """(C, H, W) of one sample of `dataset` as the model gets it."""
    from dns.cifar import CIFAR, IMAGE_SHAPE

    if dataset.name in MNIST_LIKE:
        return (1, 28, 28)
    if dataset.name in CIFAR:
        return IMAGE_SHAPE
    if dataset.name == "imagenet":
        return (3, dataset.image_size, dataset.image_size)
    raise ValueError(f"unknown dataset {dataset.name!r}")


def model_args(run: RunConfig, weights: bool = True) -> dict[str, Any]:
    """The keyword arguments of `dns.models.get_model` for this run: the dataset's channels and classes, and
    torchvision's architecture (and its weights file, unless `weights` is False)."""
    args: dict[str, Any] = {"num_classes": run.dataset.num_classes, "in_channels": sample_shape(run.dataset)[0]}
    if run.model.name == "torchvision":
        args.update(arch=run.model.arch, weights=run.model.weights if weights else None)
    return args


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """The typed config, after every range check; raises ConfigError naming the key and the fix."""
    from dns.cifar import CIFAR
    from dns.data import prepare_dataset
    from dns.distributed import world
    from dns.imagenet import check_image_folder, holds_images
    from dns.layers import per_layer
    from dns.models import get_model, input_error, layer_kind, list_models, prunable_layers
    from dns.surgeon import surgery_phases

    if isinstance(cfg, DictConfig):
        check_keys(cfg)
    run: RunConfig = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    s = run.surgery

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for key, value in numbers(run):
        require(math.isfinite(value), f"{key}={value} is not a finite number: give one")

    require(run.model.name in list_models(),
            f"unknown model {run.model.name!r}: use model=<{'|'.join(list_models())}>")
    require(run.dataset.name in DATASETS, f"unknown dataset {run.dataset.name!r}: use dataset=<{'|'.join(DATASETS)}>")
    require(run.dataset.max_shift == 0 or run.dataset.name in MNIST_LIKE,
            f"dataset.max_shift moves MNIST-style images; {run.dataset.name} crops its own: drop the override")
    require(run.dataset.max_shift <= MNIST_MARGIN,
            f"dataset.max_shift={run.dataset.max_shift} moves digits off the image (MNIST centres them in 20x20, "
            f"{MNIST_MARGIN} pixels from each edge of 28x28): give 0 to {MNIST_MARGIN}")
    require(run.optimizer.name in OPTIMIZERS, f"optimizer.name must be one of {', '.join(OPTIMIZERS)}")
    require(run.lr_policy.name in LR_POLICIES, f"lr_policy.name must be one of {', '.join(LR_POLICIES)}")
    require(run.finetune.anneal in ANNEALS,
            f"finetune.anneal={run.finetune.anneal!r}: use {', '.join(ANNEALS)}")
    for key, value in [("reference.iters", run.reference.iters), ("surgery.iters", s.iters),
                       ("finetune.iters", run.finetune.iters), ("surgery.gamma", s.gamma),
                       ("surgery.power", s.power), ("optimizer.weight_decay", run.optimizer.weight_decay),
                       ("surgery.weight_decay", s.weight_decay), ("finetune.weight_decay", run.finetune.weight_decay),
                       ("lr_policy.gamma", run.lr_policy.gamma), ("lr_policy.power", run.lr_policy.power),
                       ("seed", run.seed), ("checkpoint.every", run.checkpoint.every),
                       ("dataset.workers", run.dataset.workers), ("dataset.max_shift", run.dataset.max_shift)]:
        require(value is None or value >= 0, f"{key}={value} is negative: give a value >= 0")
    for key, value in [("optimizer.lr", run.optimizer.lr), ("surgery.lr", s.lr), ("finetune.lr", run.finetune.lr),
                       ("dataset.batch_size", run.dataset.batch_size),
                       ("dataset.test_batch_size", run.dataset.test_batch_size),
                       ("dataset.num_classes", run.dataset.num_classes), ("lr_policy.step_size", run.lr_policy.step_size),
                       ("dataset.image_size", run.dataset.image_size), ("dataset.resize_size", run.dataset.resize_size),
                       ("log_every", run.log_every), ("eval_every", run.eval_every), ("threads", run.threads)]:
        require(value is None or value > 0, f"{key}={value} must be > 0")
    require(0 <= run.optimizer.momentum < 1, f"optimizer.momentum={run.optimizer.momentum} must lie in [0, 1)")
    require(0 <= s.margin < 1, f"surgery.margin={s.margin} must lie in [0, 1)")
    for key, value in [("surgery.min_remaining", s.min_remaining),
                       *((f"surgery.min_remaining_per_layer.{n}", v) for n, v in s.min_remaining_per_layer.items())]:
        require(0 <= value <= 1, f"{key}={value} must lie in [0, 1]")
    require(s.iter_stop is None or s.iter_stop >= 0, f"surgery.iter_stop={s.iter_stop} is negative: give a value >= 0")
    for name, value in s.iter_stop_per_layer.items():
        require(value >= 0, f"surgery.iter_stop_per_layer.{name}={value} is negative: give a value >= 0")
    milestones = run.lr_policy.milestones
    require(all(m > 0 for m in milestones) and milestones == sorted(set(milestones)),
            f"lr_policy.milestones={milestones}: give increasing iterations > 0, e.g. [32000,48000]")
    require(run.lr_policy.name != "multistep" or milestones,
            "lr_policy=multistep needs lr_policy.milestones, e.g. 'lr_policy.milestones=[32000,48000]'")
    require(run.device == "auto" or run.device == "cpu" or run.device.startswith("cuda"),
            f"device={run.device!r}: use auto, cpu, cuda or cuda:N")
    if run.device.startswith("cuda"):
        check_cuda(run.device)
    require(run.dataset.shuffle or run.dataset.name != "imagenet",
            "dataset.shuffle=false reads MNIST-style data in file order; imagenet is always shuffled: drop it")
    require(run.dataset.pixels in ("torchvision", "caffe"),
            f"dataset.pixels={run.dataset.pixels!r}: use torchvision or caffe")

    require((run.model.name == "torchvision") == (run.model.arch is not None),
            "model.arch names a torchvision architecture: use model=torchvision model.arch=NAME"
            if run.model.arch is not None else "model=torchvision needs model.arch=NAME, e.g. model.arch=resnet18")
    require(run.model.weights is None or run.model.name == "torchvision",
            f"model.weights loads torchvision weights; {run.model.name} starts from reference.checkpoint=PATH")
    require(run.model.weights is None or os.path.isfile(os.path.expanduser(run.model.weights)),
            f"model.weights={run.model.weights}: no such file; give a local state_dict file (nothing is downloaded)")
    check_method(run)
    shape = sample_shape(run.dataset)
    try:
        with torch.device("meta"):  # the layer names and shapes (and a weights file's keys) are checked: allocate nothing
            model = get_model(run.model.name, **model_args(run))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    misfit = input_error(model, shape, run.dataset.num_classes,
                         name=f"torchvision {run.model.arch}" if run.model.name == "torchvision" else run.model.name)
    require(misfit is None, f"{(misfit or '').rstrip('.')}; pick a model for {run.dataset.name}")
    kinds = {name: layer_kind(layer) for name, layer in prunable_layers(model).items()}
    require(isinstance(s.layers, str) or all(isinstance(x, str) for x in s.layers),
            f"surgery.layers={s.layers!r}: give all, conv, fc or a list such as [conv1,fc1] or [layer3.*]")
    try:
        phases = surgery_phases(run, kinds)  # every selection, exclusion and per-layer key must match a layer
        per_layer("surgery.min_remaining_per_layer", s.min_remaining_per_layer, list(kinds))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    taken: dict[str, int] = {}  # layer -> the phase that operates on it
    for i, (phase, planned) in enumerate(zip(s.phases, phases)):
        where = f"surgery.phases[{i}]"
        for key, value in [("iters", phase.iters), ("iter_stop", phase.iter_stop), ("gamma", phase.gamma),
                           ("power", phase.power)]:
            require(value is None or value >= 0, f"{where}.{key}={value} is negative: give a value >= 0")
        require(phase.iters > 0, f"{where} has no iterations: give each phase its own, e.g. "
                                 f"surgery.phases=[{{layers:conv,iters:10000}},{{layers:fc,iters:10000}}]")
        for name in planned.c:  # the layers the phase operates on
            require(name not in taken, f"{where} operates on {name} again (surgery.phases[{taken.get(name)}] "
                                       f"does): phases run one after the other, each on layers of its own")
            taken[name] = i
    if s.phases:  # what the phases set for themselves, refused at the top level rather than ignored there
        default, total = SurgeryConfig(), sum(phase.iters for phase in s.phases)
        for key in ("layers", "iter_stop", "iter_stop_per_layer"):
            require(getattr(s, key) == getattr(default, key),
                    f"surgery.{key} does not apply with surgery.phases: set layers and iter_stop in each phase, "
                    f"e.g. surgery.phases=[{{layers:conv,iters:8000,iter_stop:6000}},{{layers:fc,iters:8000}}]")
        require(s.iters in (default.iters, total), f"surgery.iters={s.iters}, but the phases' iters add up to "
                                                   f"{total}: with phases it is their sum; drop it or set it to {total}")
        s.iters = total
    require(not (run.amp or run.channels_last) or run.device.startswith("cuda")
            or (run.device == "auto" and torch.cuda.is_available()),
            "amp=true and channels_last=true need a CUDA device: drop them on CPU")
    if run.reference.checkpoint is not None:
        adopt_checkpoint(run, kinds, model)
    else:
        require(not run.reference.surgery_settings, "reference.surgery_settings=true needs reference.checkpoint")
    try:
        if run.dataset.name == "imagenet":
            d, processes = run.dataset, world()[1]
            classes = len(check_image_folder(d.root))
            require(classes <= d.num_classes, f"dataset.num_classes={d.num_classes}, but {d.root}/train holds "
                                              f"{classes} class folders: set dataset.num_classes={classes}")
            require(holds_images(Path(d.root) / "train", d.batch_size * processes),
                    f"{d.root}/train holds fewer images than a batch of dataset.batch_size={d.batch_size} for each "
                    f"of {processes} process(es): lower dataset.batch_size")
        else:
            size, processes = prepare_dataset(run.dataset), world()[1]
            if run.dataset.name in CIFAR:
                classes = CIFAR[run.dataset.name].num_classes
                require(run.dataset.num_classes >= classes, f"dataset.num_classes={run.dataset.num_classes}, but "
                        f"{run.dataset.name} has {classes} classes: set dataset.num_classes={classes}")
            require(run.dataset.batch_size * processes <= size,
                    f"dataset.batch_size={run.dataset.batch_size} is larger than the {size:,} training samples of "
                    f"{run.dataset.name}{f' shared by {processes} processes' if processes > 1 else ''}: lower it")
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    return run


def numbers(node: Any, key: str = "") -> list[tuple[str, float]]:
    """(key, value) of every float setting in `node` (a config dataclass, or a dict or list of them)."""
    if isinstance(node, float):
        return [(key, node)]
    if isinstance(node, list):
        return [pair for i, value in enumerate(node) for pair in numbers(value, f"{key}[{i}]")]
    if dataclasses.is_dataclass(node):
        children = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    elif isinstance(node, dict):
        children = list(node.items())
    else:
        return []
    return [pair for name, value in children for pair in numbers(value, f"{key}.{name}" if key else str(name))]


def check_keys(cfg: DictConfig, prefix: str = "") -> None:
    """ConfigError for a key the schema does not have (added with +) or a setting deleted (with ~): OmegaConf
    would drop the first and fill in the second silently."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return  # a {layer: value} dict: any layer name may be a key
    names = [f.name for f in dataclasses.fields(schema)]
    for key in cfg.keys():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}{key} is not a setting of dns-train{hint}: drop it or correct its name")
    for name in names:
        if name not in cfg:
            raise ConfigError(f"{prefix}{name} was deleted (~{prefix}{name}), but every run needs it: drop the ~ "
                              f"override")
        value = cfg._get_node(name)
        if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
            check_keys(value, f"{prefix}{name}.")
        elif isinstance(value, ListConfig) and not value._is_missing() and not value._is_none():
            for i, item in enumerate(value):
                if isinstance(item, DictConfig):
                    check_keys(item, f"{prefix}{name}[{i}].")


def check_cuda(device: str) -> None:
    """ConfigError unless `device` (cuda or cuda:N) is there."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = device.partition(":")[2]
    if not index.isdigit() and index:
        raise ConfigError(f"device={device!r}: use auto, cpu, cuda or cuda:N")
    if count == 0:
        raise ConfigError(f"device={device}: this machine has no CUDA device (torch {torch.__version__}): use "
                          f"device=cpu or device=auto")
    if index and int(index) >= count:
        raise ConfigError(f"device={device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


# settings of DNS alone: a baseline method refuses them changed, rather than run without them
DNS_ONLY = ("c", "c_per_layer", "iter_stop", "iter_stop_per_layer", "margin", "gamma", "power", "splice", "phases",
            "phase_restart", "min_remaining", "min_remaining_per_layer")


def check_method(run: RunConfig) -> None:
    """The method's own range checks, and no DNS setting changed under a baseline; sets han's surgery.iters."""
    m, s = run.method, run.surgery

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    def finite(key: str, value, low: float, high: float = math.inf, high_open: bool = False) -> None:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high \
            and not (high_open and value == high)
        bound = f"in [{low}, {high}{')' if high_open else ']'}" if math.isfinite(high) else f">= {low}"
        require(ok, f"{key}={value} must be a finite number {bound}")

    require(m.name in METHODS, f"unknown method {m.name!r}: use method=<{'|'.join(METHODS)}>")
    require(type(m) is METHODS[m.name], f"method.name={m.name} does not change the method: use method={m.name}")
    require(s.splice or (s.min_remaining == 0 and not s.min_remaining_per_layer),
            "surgery.splice=false never sets a mask back to 1, but surgery.min_remaining keeps the largest weights by "
            "splicing them back: drop one of them")
    if m.name == "dns":
        return
    defaults = SurgeryConfig()
    for key in DNS_ONLY:
        require(getattr(s, key) == getattr(defaults, key), f"surgery.{key} is a setting of DNS; method={m.name} "
                f"does not use it: drop it (or the experiment that sets it)")
    require(not run.reference.surgery_settings, f"reference.surgery_settings takes DNS settings; method={m.name} "
                                                f"does not use them: drop it")
    if m.name == "han":
        finite("method.quality", m.quality, 0.0)
        for name, value in m.quality_per_layer.items():
            finite(f"method.quality_per_layer.{name}", value, 0.0)
        require(m.rounds >= 1, f"method.rounds={m.rounds} must be >= 1")
        require(m.round_iters >= 1, f"method.round_iters={m.round_iters} must be >= 1")
        require(m.lr is None or (math.isfinite(m.lr) and m.lr > 0), f"method.lr={m.lr} must be a finite number > 0")
        require(s.lr is None, "method=han retrains at method.lr (null: optimizer.lr / 10): set that, not surgery.lr")
        iters = m.rounds * m.round_iters
        require(s.iters in (defaults.iters, iters), f"surgery.iters={s.iters}, but method=han runs method.rounds × "
                                                    f"method.round_iters = {iters} iterations: drop surgery.iters")
        s.iters = iters
    else:
        finite("method.initial_sparsity", m.initial_sparsity, 0.0, 1.0, high_open=True)
        for key, value in [("method.final_sparsity", m.final_sparsity),
                           *((f"method.final_sparsity_per_layer.{n}", v) for n, v in m.final_sparsity_per_layer.items())]:
            finite(key, value, m.initial_sparsity, 1.0, high_open=True)
        require(not (m.global_sparsity and m.final_sparsity_per_layer),
                "method.global_sparsity=true prunes every layer to one sparsity: drop method.final_sparsity_per_layer")
        require(m.every >= 1, f"method.every={m.every} must be >= 1")
        last = m.start + (s.iters - 1 - m.start) // m.every * m.every  # the last pruning step the stage holds
        require(0 <= m.start < s.iters, f"method.start={m.start} must lie in [0, surgery.iters) = [0, {s.iters})")
        end = last if m.end is None else m.end
        require(m.start <= end < s.iters and (end - m.start) % m.every == 0,
                f"method.end={m.end} must be a pruning step in [method.start, surgery.iters): method.start plus a "
                f"multiple of method.every={m.every}, below {s.iters} (null: {last})")
        m.end = end


def adopt_checkpoint(run: RunConfig, kinds: dict[str, str], model: torch.nn.Module) -> None:
    """Check that reference.checkpoint fits the model (built on the meta device); with surgery_settings, take
    its surgery settings."""
    from dns.checkpoint import load_checkpoint, misfit
    from dns.layers import per_layer

    path = run.reference.checkpoint
    if not os.path.isfile(path):
        raise ConfigError(f"reference.checkpoint={path}: no such file; give the path of a .pt checkpoint")
    try:
        checkpoint = load_checkpoint(path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if checkpoint.get("model") != run.model.name:
        raise ConfigError(f"reference.checkpoint holds a {checkpoint.get('model')} model, not {run.model.name}: "
                          f"pick model={checkpoint.get('model')} or another checkpoint")
    stored, wanted = checkpoint.get("model_args"), model_args(run, weights=False)
    if stored and stored != wanted:
        differ = ", ".join(f"{k} {stored.get(k)} (config: {wanted.get(k)})" for k in wanted if stored.get(k) != wanted.get(k))
        raise ConfigError(f"reference.checkpoint's model differs from the config's: {differ}; pick the matching "
                          f"dataset and model settings or another checkpoint")
    problem = misfit(model, checkpoint.get("state_dict") or {}, checkpoint.get("masks"))
    if problem:
        raise ConfigError(f"reference.checkpoint={path} does not fit {run.model.name}: {problem}")
    if not run.reference.surgery_settings:
        return
    trained_by = (checkpoint.get("config") or {}).get("method", {}).get("name", "dns")
    if trained_by != "dns":
        raise ConfigError(f"{path} was pruned by method={trained_by}, whose settings are not DNS's: drop "
                          f"reference.surgery_settings=true")
    layers = {name: s for name, s in (checkpoint.get("layers") or {}).items() if s.get("c") is not None}
    if not layers:
        raise ConfigError(f"{path} stores no surgery settings: drop reference.surgery_settings=true")
    # what the config sets away from the defaults wins over the checkpoint (surgery_settings fills in the rest)
    s, default, names = run.surgery, SurgeryConfig(), list(kinds)
    if s.phases:
        raise ConfigError("reference.surgery_settings=true takes one surgery of the checkpoint's layers; "
                          "surgery.phases sets its own: drop one of the two")
    given = {key for key in ("layers", "c", "iter_stop", "gamma", "power") if getattr(s, key) != getattr(default, key)}
    if "layers" not in given:
        s.layers = [name for name in kinds if name in layers]
    if "c" not in given:  # surgery.c given: every layer's c, as without the checkpoint (but for c_per_layer)
        s.c_per_layer = {**{name: float(v["c"]) for name, v in layers.items()},
                         **per_layer("surgery.c_per_layer", s.c_per_layer, names)}
    if "iter_stop" not in given:
        s.iter_stop_per_layer = {**{name: int(v["iter_stop"]) for name, v in layers.items()
                                    if v.get("iter_stop") is not None},
                                 **per_layer("surgery.iter_stop_per_layer", s.iter_stop_per_layer, names)}
    for key in ("gamma", "power"):
        values = {v[key] for v in layers.values() if v.get(key) is not None}
        if key in given or not values:
            continue
        if len(values) > 1:
            raise ConfigError(f"{path} gives its layers different {key} values {sorted(values)}; dns-train takes "
                              f"one: drop reference.surgery_settings=true and set surgery.{key}")
        setattr(s, key, values.pop())
