"""dns-train as users run it: the installed console script, in a fresh working directory."""

import json
import os
import subprocess

import pytest
import torch

from conftest import console_argv

QUICK = ["model=lenet300", "reference.iters=300", "surgery.iters=300", "finetune.iters=100",
         "eval_every=100", "log_every=50"]


def test_installed_script_composes_the_config(dns_train):
    result = dns_train("--cfg", "job", "model=lenet300", "surgery.c_per_layer={fc1:4}")
    assert result.returncode == 0, result.stderr
    assert "name: lenet300" in result.stdout and "fc1: 4.0" in result.stdout


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, data_root):
    """Files for the bad-input table, outside the working directory the test checks is left empty."""
    from dataclasses import asdict

    from dns.checkpoint import save_checkpoint
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from PIL import Image

    import dns
    import dns.cli  # noqa: F401  (registers the config schemas)
    from dns.models import get_model

    root = tmp_path_factory.mktemp("bad")
    (root / "garbage.pt").write_bytes(b"not a checkpoint at all")
    lenet5 = get_model("lenet5").state_dict()
    save_checkpoint(root / "misfit.pt", model="lenet5", num_classes=10,  # fc1 of another width
                    state_dict={**lenet5, "fc1.weight": torch.zeros(400, 800)})
    save_checkpoint(root / "missing.pt", model="lenet5", num_classes=10,  # a parameter left out
                    state_dict={k: v for k, v in lenet5.items() if k != "fc2.bias"})
    dns.save(get_model("lenet300"), root / "model.dns")
    (root / "lenet5.caffemodel").symlink_to(next((data_root / "dns-caffe" / "lenet5").glob("*.caffemodel")))
    (root / "foreign").mkdir()  # a user's folder, no run of ours
    (root / "foreign" / "report.md").write_text("my notes\n")
    (root / "foreign" / "history.csv").write_text("a,b\n1,2\n")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("syntax = \"proto2\";\n")
    (root / "sweep" / "1" / ".hydra").mkdir(parents=True)  # job 1 of a sweep that ran before
    real = data_root / "MNIST" / "raw"
    for folder, replaced in (("swapped", {"train-images-idx3-ubyte": real / "t10k-images-idx3-ubyte"}),
                             ("badlabels", {})):
        raw = root / folder / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            (raw / name).symlink_to(replaced.get(name, real / name))
    labels = bytearray((real / "train-labels-idx1-ubyte").read_bytes())
    labels[8 + 100:8 + 110] = bytes([12] * 10)  # ten labels out of 0-9 among 60,000
    (root / "badlabels" / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    (root / "badlabels" / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(labels)
    (root / "truncated.pt").write_bytes((data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()[:99])
    save_checkpoint(root / "lenet300.pt", model="lenet300", num_classes=10,
                    state_dict=get_model("lenet300").state_dict())
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).symlink_to(data_root / "MNIST" / "raw" / name)
    (raw / "t10k-labels-idx1-ubyte").write_bytes((data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()[:5000])
    for split in ("train", "val"):  # an ImageFolder of two classes, one image each; and one whose val/ has none
        for name in ("n01440764", "n01443537"):
            (root / "imagenet" / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(root / "imagenet" / split / name / "a.JPEG")
            (root / "imagenet_noval" / split / name).mkdir(parents=True)
            if split == "train":
                Image.new("RGB", (32, 32)).save(root / "imagenet_noval" / split / name / "a.JPEG")
    # a run directory whose checkpoint was made with surgery.c=2
    with initialize_config_module(config_module="dns.conf", version_base="1.3"):
        saved = asdict(OmegaConf.to_object(compose(config_name="config", overrides=["surgery.c=2"])))
    save_checkpoint(root / "run" / "checkpoints" / "latest.pt", model="lenet5", config=saved)
    return root


BAD_INPUT = [
    (["model=vgg"], "unknown model 'vgg': use model=<alexnet|lenet300|lenet5|resnet110|resnet20|resnet32|resnet44|resnet56|torchvision>"),
    (["dataset=cifar"], "unknown dataset 'cifar'"),
    (["optimizer=adam"], "unknown optimizer 'adam': use optimizer=<caffe_sgd|sgd>"),
    (["experiment=paper_lenet7"], "unknown experiment 'paper_lenet7'"),
    (["surgery.margin=1"], "surgery.margin=1.0 must lie in [0, 1)"),
    (["surgery.margin=-0.1"], "surgery.margin=-0.1 must lie in [0, 1)"),
    (["surgery.gamma=-1e-4"], "surgery.gamma=-0.0001 is negative"),
    (["surgery.power=-1"], "surgery.power=-1.0 is negative"),
    (["surgery.weight_decay=-1e-3"], "surgery.weight_decay=-0.001 is negative"),
    (["finetune.weight_decay=-1"], "finetune.weight_decay=-1.0 is negative"),
    (["surgery.min_remaining=1.5"], "surgery.min_remaining=1.5 must lie in [0, 1]"),
    (["reference.iters=-1"], "reference.iters=-1 is negative"),
    (["surgery.iters=-10"], "surgery.iters=-10 is negative"),
    (["finetune.iters=-3"], "finetune.iters=-3 is negative"),
    (["finetune.anneal=exp"], "finetune.anneal='exp': use none, linear, cosine"),
    (["checkpoint.every=-5"], "checkpoint.every=-5 is negative"),
    (["optimizer.momentum=1"], "optimizer.momentum=1.0 must lie in [0, 1)"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 must be > 0"),
    (["dataset.max_shift=-1"], "dataset.max_shift=-1 is negative"),
    (["model=alexnet", "dataset=imagenet", "dataset.max_shift=1"], "dataset.max_shift moves MNIST-style images"),
    (["surgery.c=high"], "Value 'high' of type 'str' could not be converted to Float"),
    (["seed=1.5"], "Value '1.5' of type 'float' could not be converted to Integer"),
    (["surgery.cc=1"], "Key 'cc' not in 'SurgeryConfig'"),
    (["surgery.c_per_layer={fc9:1}"], "surgery.c_per_layer: 'fc9' matches no layer; layers are conv1, conv2, fc1, fc2"),
    (["model=lenet300", "surgery.c_per_layer={conv1:1}"], "surgery.c_per_layer: 'conv1' matches no layer"),
    (["surgery.layers=[conv1,fc7]"], "surgery.layers: 'fc7' matches no layer"),
    (["surgery.exclude=[fc*,layer3.*]"], "exclude: 'layer3.*' matches no layer"),
    (["surgery.iter_stop_per_layer={conv?:5,*.weight:2}"], "surgery.iter_stop_per_layer: '*.weight' matches no layer"),
    (["surgery.min_remaining_per_layer={fc9:0.1}"], "surgery.min_remaining_per_layer: 'fc9' matches no layer"),
    (["lr_policy=multistep", "lr_policy.milestones=[]"], "lr_policy=multistep needs lr_policy.milestones"),
    (["lr_policy=multistep", "lr_policy.milestones=[48000,32000]"], "lr_policy.milestones=[48000, 32000]: give "
                                                                    "increasing iterations > 0"),
    (["method=obs"], "unknown method 'obs': use method=<dns|gmp|han>"),
    (["method=han", "method.name=dns"], "method.name=dns does not change the method: use method=dns"),
    (["surgery.splice=false", "surgery.min_remaining=0.01"], "surgery.splice=false never sets a mask back to 1"),
    (["method=han", "surgery.c=2"], "surgery.c is a setting of DNS; method=han does not use it"),
    (["method=gmp", "surgery.splice=false"], "surgery.splice is a setting of DNS; method=gmp does not use it"),
    (["method=han", "surgery.lr=0.01"], "method=han retrains at method.lr"),
    (["method=han", "surgery.iters=500"], "surgery.iters=500, but method=han runs method.rounds × method.round_iters"),
    (["method=han", "method.quality=nan"], "method.quality=nan is not a finite number"),
    (["method=han", "method.quality=-1"], "method.quality=-1.0 must be a finite number >= 0.0"),
    (["method=han", "method.quality=abc"], "Value 'abc' of type 'str' could not be converted to Float"),
    (["method=han", "method.rounds=0"], "method.rounds=0 must be >= 1"),
    (["method=han", "method.quality_per_layer={fc9:2}"], "method.quality_per_layer: 'fc9' matches no layer"),
    (["method=gmp", "method.final_sparsity=1"], "method.final_sparsity=1.0 must be a finite number in [0.0, 1.0)"),
    (["method=gmp", "method.initial_sparsity=0.5", "method.final_sparsity_per_layer={fc1:0.3}"],
     "method.final_sparsity_per_layer.fc1=0.3 must be a finite number in [0.5, 1.0)"),
    (["method=gmp", "method.end=14000"], "method.end=14000 must be a pruning step in [method.start, surgery.iters)"),
    (["method=gmp", "method.end=150"], "method.end=150 must be a pruning step"),
    (["method=gmp", "method.every=0"], "method.every=0 must be >= 1"),
    (["method=gmp", "method.global_sparsity=true", "method.final_sparsity_per_layer={fc1:0.9}"],
     "method.global_sparsity=true prunes every layer to one sparsity"),
    (["model=torchvision"], "model=torchvision needs model.arch=NAME"),
    (["model.arch=resnet18"], "model.arch names a torchvision architecture: use model=torchvision model.arch=NAME"),
    (["model=torchvision", "model.arch=resnet18", "model.weights=/nonexistent.pth"],
     "model.weights=/nonexistent.pth: no such file"),
    (["model=resnet20", "dataset=cifar10", "dataset.root=/nonexistent", "dataset.download=false"],
     "/nonexistent/cifar-10-batches-py"),
    (["surgery.min_remaining_per_layer={fc1:2}"], "surgery.min_remaining_per_layer.fc1=2.0 must lie in [0, 1]"),
    (["dataset.root=/nonexistent", "dataset.download=false"], "/nonexistent/MNIST/raw lacks"),
    (["dataset.root={files}/mnist", "dataset.download=false"],
     "t10k-labels-idx1-ubyte is truncated or corrupt (5,000 bytes, its header says 10,008)"),
    (["reference.checkpoint=/nonexistent.pt"], "reference.checkpoint=/nonexistent.pt: no such file"),
    (["reference.checkpoint={files}/garbage.pt"], "garbage.pt is not a readable checkpoint"),
    (["reference.checkpoint={files}/truncated.pt"], "truncated.pt is not a readable checkpoint"),
    (["reference.checkpoint={files}/lenet300.pt"], "holds a lenet300 model, not lenet5: pick model=lenet300"),
    (["resume=true", "hydra.run.dir=/nonexistent/run"], "resume=true: there is no run directory /nonexistent/run"),
    (["resume=true", "surgery.c=3", "hydra.run.dir={files}/run"], "was run with surgery.c=2.0, not 3.0"),
    (["-m", "surgery.c=1,2", "surgery.margin=2"], "surgery.margin=2.0 must lie in [0, 1)"),
    (["-m", "--cfg", "job", "seed=0,1"], "-m and --cfg do not go together"),
    (["--multirun", "--info=searchpath", "seed=0,1"], "--multirun and --info=searchpath do not go together"),
    (["surgery.phases=[{layers:[fc9],iters:10}]"], "surgery.phases[0].layers: 'fc9' matches no layer"),
    (["surgery.phases=[{layers:fc,iters:10,c_per_layer:{layer*:2}}]"],
     "surgery.phases[0].c_per_layer: 'layer*' matches no layer"),
    (["surgery.phases=[{layers:conv,iters:-5}]"], "surgery.phases[0].iters=-5 is negative"),
    (["amp=true", "device=cpu"], "amp=true and channels_last=true need a CUDA device: drop them on CPU"),
    (["dataset.pixels=bgr"], "dataset.pixels='bgr': use torchvision or caffe"),
    (["model=alexnet"], "alexnet cannot take 1x28x28 images (alexnet's native input is 3x227x227)"),
    (["model=lenet5", "dataset=cifar10"], "lenet5 cannot take 3x32x32 images (lenet5's native input is 1x28x28): fc1 "
                                          "(Linear) fails on its [2, 1250] input"),
    (["model=torchvision", "model.arch=vgg16", "dataset=fashion_mnist"], "vgg16 cannot take 1x28x28 images: "
                                                                          "features.30 (MaxPool2d) fails"),
    (["model=torchvision", "model.arch=resnet9000"], "unknown torchvision arch 'resnet9000': see "
                                                     "torchvision.models.list_models(module=torchvision.models)"),
    (["surgery.phases=[{layers:conv,iters:10}]", "surgery.iter_stop_per_layer={fc9:5}"],
     "surgery.iter_stop_per_layer: 'fc9' matches no layer"),
    (["surgery.layers=[fc1]", "surgery.exclude=[fc*]"], "surgery.layers minus surgery.exclude leaves no layer"),
    (["model=alexnet", "dataset=imagenet", "dataset.root={files}/mnist"], "imagenet: {files}/mnist/train is missing"),
    (["model=alexnet", "dataset=imagenet", "dataset.root={files}/imagenet", "dataset.num_classes=1"],
     "dataset.num_classes=1, but {files}/imagenet/train holds 2 class folders: set dataset.num_classes=2"),
    (["model=alexnet", "dataset=imagenet", "dataset.root={files}/imagenet", "dataset.num_classes=2"],
     "{files}/imagenet/train holds fewer images than a batch of dataset.batch_size=256"),
    (["experiment=paper_alexnet", "dataset.root={files}/imagenet"], "bvlc_alexnet.pt: no such file"),
    (["model=alexnet", "dataset=imagenet", "dataset.root={files}/imagenet", "dataset.shuffle=false"],
     "dataset.shuffle=false reads MNIST-style data in file order; imagenet is always shuffled"),
    # numbers that are no numbers
    (["surgery.c=nan"], "surgery.c=nan is not a finite number"),
    (["surgery.c=-inf"], "surgery.c=-inf is not a finite number"),
    (["surgery.gamma=inf"], "surgery.gamma=inf is not a finite number"),
    (["surgery.power=nan"], "surgery.power=nan is not a finite number"),
    (["surgery.min_remaining=nan"], "surgery.min_remaining=nan is not a finite number"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not a finite number"),
    (["optimizer.momentum=nan"], "optimizer.momentum=nan is not a finite number"),
    (["finetune.lr=inf"], "finetune.lr=inf is not a finite number"),
    (["lr_policy.gamma=nan"], "lr_policy.gamma=nan is not a finite number"),
    (["surgery.c_per_layer={fc1:nan}"], "surgery.c_per_layer.fc1=nan is not a finite number"),
    (["surgery.phases=[{layers:conv,iters:10,c:inf}]"], "surgery.phases[0].c=inf is not a finite number"),
    (["method=gmp", "method.final_sparsity=nan"], "method.final_sparsity=nan is not a finite number"),
    # selections and phases that operate on nothing, or twice
    (["model=lenet300", "surgery.layers=conv"], "surgery.layers minus surgery.exclude leaves no layer"),
    (["surgery.layers=[]"], "surgery.layers minus surgery.exclude leaves no layer"),
    (["model=lenet300", "surgery.exclude=[fc]"], "surgery.layers minus surgery.exclude leaves no layer"),
    (["surgery.phases=[{layers:conv}]"], "surgery.phases[0] has no iterations"),
    (["surgery.phases=[{layers:conv,iters:0},{layers:fc,iters:10}]"], "surgery.phases[0] has no iterations"),
    (["surgery.phases=[{layers:conv,iters:10},{layers:all,iters:10}]"],
     "surgery.phases[1] operates on conv1 again (surgery.phases[0] does)"),
    # top-level settings that phases set for themselves: refused, not ignored
    (["surgery.phases=[{layers:conv,iters:10}]", "surgery.iter_stop=5"],
     "surgery.iter_stop does not apply with surgery.phases: set layers and iter_stop in each phase"),
    (["surgery.phases=[{layers:conv,iters:10}]", "surgery.iter_stop_per_layer={fc1:5}"],
     "surgery.iter_stop_per_layer does not apply with surgery.phases"),
    (["surgery.phases=[{layers:conv,iters:10}]", "surgery.layers=fc"], "surgery.layers does not apply with surgery.phases"),
    (["surgery.phases=[{layers:conv,iters:10},{layers:fc,iters:20}]", "surgery.iters=100"],
     "surgery.iters=100, but the phases' iters add up to 30: with phases it is their sum; drop it or set it to 30"),
    # data settings that cannot hold
    (["dataset.batch_size=60001"], "dataset.batch_size=60001 is larger than the 60,000 training samples of mnist"),
    (["dataset.max_shift=5"], "dataset.max_shift=5 moves digits off the image"),
    (["dataset.root={files}/swapped", "dataset.download=false"],
     "train-images-idx3-ubyte holds 10,000 images but train-labels-idx1-ubyte 60,000 labels"),
    (["dataset.root={files}/badlabels", "dataset.download=true"],
     "train-labels-idx1-ubyte holds 10 labels outside 0-9 (the first at index 100: 12)"),
    (["model=alexnet", "dataset=imagenet", "dataset.root={files}/imagenet_noval", "dataset.num_classes=2"],
     "imagenet: the class folders of {files}/imagenet_noval/val hold no images"),
    # keys that do not exist, settings deleted
    (["+surgery.c_rate=5"], "surgery.c_rate is not a setting of dns-train"),
    (["+surgery.marginn=0.2"], "surgery.marginn is not a setting of dns-train (did you mean surgery.margin?)"),
    (["+foo=1"], "foo is not a setting of dns-train"),
    (["~surgery"], "surgery was deleted (~surgery), but every run needs it"),
    (["~model"], "model was deleted (~model), but every run needs it"),
    # devices that are not there
    pytest.param(["device=cuda"], "device=cuda: this machine has no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")),
    pytest.param(["device=cuda:7"], "device=cuda:7: this machine has",
                 marks=pytest.mark.skipif(torch.cuda.device_count() > 7, reason="cuda:7 is there")),
    (["device=gpu"], "device='gpu': use auto, cpu, cuda or cuda:N"),
    # checkpoints that do not fit
    (["reference.checkpoint={files}/misfit.pt"],
     "does not fit lenet5: the tensor fc1.weight is [400, 800], but the model's is [500, 800]"),
    (["reference.checkpoint={files}/missing.pt"], "does not fit lenet5: the tensors do not fit the model: 1 missing "
                                                  "(fc2.bias)"),
    (["reference.checkpoint={files}/model.dns"], "model.dns is a .dns file (dns-export's compact model), not a "
                                                 "checkpoint: dns-eval and dns.load read it"),
    # run directories that are not free
    (["hydra.run.dir={files}/garbage.pt"], "{files}/garbage.pt is a file, not a directory"),
    (["hydra.run.dir={files}/garbage.pt/run"], "cannot write into the run directory {files}/garbage.pt/run"),
    (["hydra.run.dir=/proc/dns-test"], "cannot write into the run directory /proc/dns-test"),
    (["hydra.run.dir={files}/run"], "{files}/run already holds a run (unfinished): go on with it with resume=true"),
    (["hydra.run.dir={files}/foreign"], "{files}/foreign is not empty (it holds history.csv, report.md)"),
    (["resume=true", "hydra.run.dir={files}/foreign"], "resume=true: {files}/foreign holds no run of dns-train"),
    (["resume=true", "hydra.run.dir={files}/notes"], "resume=true: {files}/notes holds no run of dns-train"),
    (["resume=true", "overwrite=true", "hydra.run.dir={files}/run"], "overwrite=true replaces it: drop one of them"),
    (["-m", "surgery.c=1,2", "hydra.sweep.dir={files}/sweep"], "{files}/sweep/1 already holds a run"),
    (["-m", "surgery.c=1,2", "resume=true", "hydra.sweep.dir=/nonexistent/sweep"],
     "resume=true: there is no sweep directory /nonexistent/sweep"),
    (["threads=0"], "threads=0 must be > 0"),
    # every launcher and sweeper: refused before any job starts
    (["-m", "hydra/launcher=joblib", "surgery.c=1,2", "surgery.margin=2"], "surgery.margin=2.0 must lie in [0, 1)"),
    (["-m", "hydra/launcher=submitit_local", "seed=0,1", "surgery.c_per_layer.fc9=2"],
     "surgery.c_per_layer: 'fc9' matches no layer"),
    (["-m", "hydra/sweeper=dns_optuna", "surgery.margin=interval(0.5,2)"], "surgery.margin=2.0 must lie in [0, 1)"),
    (["-m", "hydra/sweeper=dns_optuna", "surgery.c_per_layer.fc9=interval(1,2)"],
     "surgery.c_per_layer: 'fc9' matches no layer"),
    (["-m", "hydra/sweeper=dns_optuna", "hydra.sweep.dir={files}/sweep"], "{files}/sweep/1 already holds a run"),
    (["-m", "surgery.c=interval(1,2)"], "surgery.c=interval(1,2): a grid sweep takes lists of values"),
    (["-m", "hydra.launcher.n_jobs=1,2", "seed=1"], "Hydra's own settings take one value in a sweep"),
    (["-m", "seed=shuffle(1,2)"], "give the values in the order wanted instead of shuffle()"),
    (["-m", "hydra/sweeper=dns_optuna", "model=choice(lenet5,lenet300)"],
     "the searched settings change them (conv1,conv2,fc1,fc2 against fc1,fc2,fc3)"),
    (["-m", "hydra/sweeper=dns_optuna", "model=lenet300", "surgery.c_per_layer.fc1=5", "surgery.c_per_layer.fc2=2",
      "surgery.c_per_layer.fc3=2"], "dns_optuna has nothing to search"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT,
                         ids=[" ".join(case.values[0] if hasattr(case, "values") else case[0]) for case in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(data_root, tmp_path, bad_files, args, message):
    assert_refused("dns-train", args, message, bad_files, tmp_path, {**os.environ, "DNS_DATA": str(data_root)})


def assert_refused(program: str, args: list[str], message: str, files, cwd, env=None) -> None:
    """`program` with `args` ({files}: `files`, {cwd}: `cwd`) exits 2 with one line holding `message`, and
    writes nothing: `cwd` stays empty (no run directory, no outputs/), and nothing in `files` changes."""
    def filled(text: str) -> str:
        return text.replace("{files}", str(files)).replace("{cwd}", str(cwd))

    def snapshot():
        return {p: p.read_bytes() if p.is_file() and not p.is_symlink() else None for p in files.rglob("*")}

    before = snapshot()
    result = subprocess.run(console_argv(program, *map(filled, args)), cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: ") and filled(message) in lines[0], result.stderr
    assert list(cwd.iterdir()) == []
    assert snapshot() == before


# the other commands: (program, arguments, the one line); {files}: bad_files, {cwd}: the empty working directory
OTHER_BAD_INPUT = [
    ("dns-eval", ["{files}/misfit.pt"], "the tensor fc1.weight is [400, 800], but the model's is [500, 800]"),
    ("dns-eval", ["{files}/lenet300.pt", "surgery.c=3"], "surgery.c=3: dns-eval takes only the dataset's settings"),
    ("dns-eval", ["{files}/nothere.pt"], "{files}/nothere.pt does not read (No such file or directory)"),
    ("dns-eval", ["{files}/garbage.pt"], "garbage.pt is not a readable checkpoint"),
    ("dns-eval", ["{files}"], "{files} does not read (Is a directory)"),
    ("dns-export", ["{files}/model.dns", "--out", "{cwd}/x.dns"], "model.dns is a .dns file"),
    ("dns-export", ["{files}/misfit.pt", "--out", "{cwd}/x.dns"], "the tensor fc1.weight is [400, 800]"),
    ("dns-export", ["{files}/lenet300.pt", "--out", "{files}/garbage.pt/x.dns"],
     "--out {files}/garbage.pt/x.dns: {files}/garbage.pt is a file, not a folder"),
    ("dns-export", ["{files}/lenet300.pt", "--out", "{files}"], "--out {files} is a directory"),
    ("dns-export", ["{files}/lenet300.pt", "--out", "{files}/lenet300.pt"], "is the input file"),
    ("dns-import-caffe", ["{files}/lenet300.pt", "--model", "lenet5", "--out", "{cwd}/x.pt"],
     "lenet300.pt is not a binary .caffemodel"),
    ("dns-import-caffe", ["{files}/notes/notes.txt", "--model", "lenet5", "--out", "{cwd}/x.pt"],
     "notes.txt is not a binary .caffemodel"),
    ("dns-import-caffe", ["{files}/nothere.caffemodel", "--model", "lenet5", "--out", "{cwd}/x.pt"],
     "nothere.caffemodel: No such file or directory"),
    ("dns-import-caffe", ["{files}/garbage.pt", "--model", "lenet5", "--out", "{files}/notes"], "is a directory"),
    ("dns-report", ["{files}/nothere"], "{files}/nothere is not a directory"),
    ("dns-report", ["{files}/notes"], "no run directories (report.json or .hydra/) under {files}/notes"),
    ("dns-report", ["{files}/sweep", "--out", "{files}/garbage.pt"], "--out {files}/garbage.pt is a file"),
    # places no one may write, root included (the tests may run as root, for whom permissions do not hold)
    ("dns-export", ["{files}/lenet300.pt", "--out", "/proc/dns-test.dns"], "cannot write /proc/dns-test.dns"),
    ("dns-report", ["{files}/sweep", "--out", "/proc/dns-test"], "cannot write /proc/dns-test"),
    ("dns-import-caffe", ["{files}/lenet5.caffemodel", "--model", "lenet5", "--out", "/proc/dns-test.pt"],
     "cannot write /proc/dns-test.pt"),
    ("dns-export", ["{files}/missing.pt", "--out", "{cwd}/x.dns"], "1 missing (fc2.bias), 0 unexpected"),
    ("dns-eval", ["{files}/missing.pt"], "1 missing (fc2.bias), 0 unexpected"),
]


@pytest.mark.parametrize("program, args, message", OTHER_BAD_INPUT,
                         ids=[" ".join([p, *a]) for p, a, _ in OTHER_BAD_INPUT])
def test_bad_input_to_the_other_commands_is_one_line_exit_2_and_writes_nothing(tmp_path, bad_files, program, args,
                                                                              message):
    assert_refused(program, args, message, bad_files, tmp_path)


def test_a_short_run_on_real_mnist_writes_every_report(dns_train, tmp_path):
    result = dns_train(*QUICK, "surgery.c=2", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["status"] == "completed" and report["model"] == "lenet300" and report["dataset"] == "mnist"
    assert report["iterations"] == {"reference": 300, "surgery": 300, "finetune": 100}
    test = report["test"]
    assert 0 < test["reference_error"] < 0.15 and 0 < test["final_error"] < 0.15  # learned MNIST
    assert report["total"]["compression"] > 3  # c = 2 cuts most connections
    assert [layer["name"] for layer in report["layers"]] == ["fc1", "fc2", "fc3"]
    for layer in report["layers"]:
        assert layer["a"] < layer["b"] and layer["pruned"] > 0 and layer["c"] == 2.0
        assert set(layer) >= {"name", "kind", "shape", "params", "remaining", "remaining_pct", "mu", "sigma",
                              "a", "b", "c", "pruned", "spliced"}

    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    recount = {name: int(final["masks"][f"{name}.weight"].sum() + final["masks"][f"{name}.bias"].sum())
               for name in ("fc1", "fc2", "fc3")}
    assert recount == {layer["name"]: layer["remaining"] for layer in report["layers"]}
    assert final["layers"]["fc1"]["a"] == report["layers"][0]["a"]
    assert torch.load(run / "checkpoints" / "reference.pt", weights_only=True)["stage"] == "reference"

    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("stage,step,iteration,lr,loss,train_error,sigma,remaining_pct,fc1_remaining_pct")
    assert len(history) == 1 + 6 + 6 + 2  # a row every 50 iterations of each stage
    assert "| **total** | **266,610** |" in (run / "report.md").read_text()
    for plot in ("remaining.png", "test_error.png"):
        assert (run / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_seed_gives_the_same_run(dns_train, tmp_path):
    for name in ("a", "b"):
        assert dns_train(*QUICK, "seed=3", f"hydra.run.dir={name}").returncode == 0
    a, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b"))
    assert a["layers"] == b["layers"] and a["test"] == b["test"]


def test_multirun_sweeps_c_into_three_runs(dns_train, tmp_path):
    result = dns_train("-m", *QUICK, "reference.iters=100", "surgery.iters=50", "finetune.iters=0",
                       "surgery.c=1,2,3")
    assert result.returncode == 0, result.stderr
    reports = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/report.json"))
    assert len(reports) == 3
    runs = [json.loads(p.read_text()) for p in reports]
    assert [r["config"]["surgery"]["c"] for r in runs] == [1.0, 2.0, 3.0]
    compression = [r["total"]["compression"] for r in runs]
    assert compression[0] < compression[1] < compression[2]  # a higher c prunes more


def test_the_report_measures_bytes_of_the_compact_file(dns_train, tmp_path):
    assert dns_train(*QUICK, "surgery.c=3", "hydra.run.dir=run").returncode == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    size = report["bytes"]
    assert size["dense_float32"] == 4 * 266610
    assert size["dns_float16"] < size["dns_float32"] < size["dense_float32"] / 5
    assert size["ratio_float32"] == size["dense_float32"] / size["dns_float32"]
    assert "Size on disk: 1,066,440 bytes dense" in (tmp_path / "run" / "report.md").read_text()
