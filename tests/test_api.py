"""The Python API: DNS in a training loop of the user's own, on a model of the user's own."""

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import dns
from dns.masks import dense

README = Path(__file__).resolve().parent.parent / "README.md"


class Net(nn.Module):
    """A model dns has never seen: conv and fc layers under nested names, and a layer without weights."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.ModuleDict({"hidden": nn.Linear(4 * 3 * 3, 16), "out": nn.Linear(16, 3)})

    def forward(self, x):
        return self.head["out"](torch.relu(self.head["hidden"](self.features(x).flatten(1))))


def batches(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n)]


def train(model, optimizer, surgeon, data):
    for images, labels in data:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        surgeon.step()


def fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # made before the surgeon: stays valid
    return model, optimizer


SETTINGS = dict(c=0.5, c_per_layer={"head.out": 0.2}, gamma=1e-2, iter_stop=35, seed=3)


def test_a_users_checkpoint_resumes_surgery_exactly(tmp_path):
    data = batches(60)
    model, optimizer = fresh()
    surgeon = dns.Surgeon(model, **SETTINGS)
    train(model, optimizer, surgeon, data)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer = fresh()
    surgeon = dns.Surgeon(model, **SETTINGS)
    train(model, optimizer, surgeon, data[:25])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "surgeon": surgeon.state_dict()},
               tmp_path / "mine.pt")

    model, optimizer = fresh(seed=1)  # other initial weights: all must come from the checkpoint
    surgeon = dns.Surgeon(model, **SETTINGS)
    saved = torch.load(tmp_path / "mine.pt", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    surgeon.load_state_dict(saved["surgeon"])
    assert surgeon.iteration == 25
    train(model, optimizer, surgeon, data[25:])
    resumed = model.state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    rows = {row["name"]: row for row in surgeon.table()}
    assert rows["head.hidden"]["pruned"] > 0 and 0 < rows["head.hidden"]["remaining_pct"] < 100
    assert all(row["mu"] is not None and row["a"] < row["b"] for row in rows.values())


def test_surgeon_settings_reach_each_layer():
    model, _ = fresh()
    surgeon = dns.Surgeon(model, c=1.5, c_per_layer={"head.out": 3.0}, layers="fc", iter_stop=100,
                          iter_stop_per_layer={"head.out": 50}, margin=0.2, prune_bias=False)
    layers = {layer.name: layer for layer in surgeon.layers}
    assert list(layers) == ["features.0", "head.hidden", "head.out"]
    assert (layers["head.hidden"].c, layers["head.hidden"].iter_stop) == (1.5, 100)
    assert (layers["head.out"].c, layers["head.out"].iter_stop) == (3.0, 50)
    assert layers["features.0"].c is None and layers["features.0"].a is None  # masked, not under surgery
    assert all(layer.keys == ("weight",) for layer in layers.values())
    hidden = layers["head.hidden"]
    assert hidden.b / hidden.a == pytest.approx(1.2 / 0.8)
    assert hidden.a == pytest.approx(0.8 * (hidden.mu + 1.5 * hidden.sigma))


def test_the_table_the_markdown_and_the_compression():
    model, optimizer = fresh()
    surgeon = dns.Surgeon(model, c=1.0, gamma=0.0)
    surgeon.step()
    rows = surgeon.table()
    assert [row["name"] for row in rows] == ["features.0", "head.hidden", "head.out"]
    total = surgeon.totals()
    assert total["params"] == sum(p.numel() for p in model.parameters())
    assert total["compression"] == pytest.approx(total["params"] / total["remaining"]) and total["compression"] > 1
    markdown = surgeon.markdown()
    assert f"| head.hidden | 592 | {rows[1]['remaining']:,} |" in markdown
    assert f"Compression: **{total['compression']:.1f}×**" in markdown


def test_remove_then_save_gives_an_ordinary_model_and_a_file_that_loads_into_it(tmp_path):
    model, optimizer = fresh()
    surgeon = dns.Surgeon(model, c=1.0, gamma=0.0)
    train(model, optimizer, surgeon, batches(5))
    x = torch.randn(4, 1, 8, 8)
    expected = model(x).detach()
    weight = dense(model.head["hidden"], "weight")
    assert surgeon.remove() is model
    assert model.head["hidden"].weight is weight  # the same Parameter: the optimizer stays valid
    assert all(type(m).__module__ == "torch.nn.modules.linear" for m in model.head.values())
    assert torch.equal(model(x), expected)
    assert sorted(model.state_dict()) == sorted(Net().state_dict())
    size = dns.save(model, tmp_path / "net.dns")
    assert size < 4 * sum(p.numel() for p in model.parameters())
    assert torch.equal(dns.load(tmp_path / "net.dns", model=Net())(x), expected)
    with pytest.raises(ValueError, match=r"model of your own: pass it"):
        dns.load(tmp_path / "net.dns")


def test_a_masked_model_saves_the_same_file_as_after_remove(tmp_path):
    model, optimizer = fresh()
    surgeon = dns.Surgeon(model, c=1.0, gamma=0.0)
    train(model, optimizer, surgeon, batches(3))
    dns.save(model, tmp_path / "masked.dns")
    surgeon.remove()
    dns.save(model, tmp_path / "removed.dns")
    assert (tmp_path / "masked.dns").read_bytes() == (tmp_path / "removed.dns").read_bytes()


@pytest.mark.parametrize("kwargs, message", [
    (dict(c=float("nan")), r"c=nan: must be a finite number"),
    (dict(c_per_layer={"head.outt": 1.0}), r"c_per_layer: 'head.outt' matches no layer; "
                                            r"layers are features.0, head.hidden, head.out"),
    (dict(layers=["fc9"]), r"layers: 'fc9' matches no layer"),
    (dict(exclude=["head.*", "tail.*"]), r"exclude: 'tail.\*' matches no layer"),
    (dict(iter_stop_per_layer={"head*": 5, "*.out": 6}), r"'head\*' and '\*.out' both match 'head.out'"),
    (dict(margin=1.0), r"margin=1.0: must be a finite number in \[0.0, 1.0\)"),
    (dict(gamma=-1e-4), r"gamma=-0.0001: must be a finite number"),
    (dict(power=float("inf")), r"power=inf"),
    (dict(iter_stop=-5), r"iter_stop=-5: must be an iteration"),
    (dict(min_remaining=1.5), r"min_remaining=1.5: must be a finite number in \[0.0, 1.0\]"),
    (dict(masks={"head.out.weight": torch.ones(2, 2)}), r"a mask of shape \[2, 2\] does not fit head.out.weight of shape \[3, 16\]"),
    (dict(masks={"head.out.weigth": torch.ones(3, 16)}), r"masks names head.out.weigth: no such conv or fc parameter"),
])
def test_bad_settings_are_refused_before_anything_is_masked(kwargs, message):
    model, _ = fresh()
    with pytest.raises(ValueError, match=message):
        dns.Surgeon(model, **kwargs)
    assert not any(key.endswith(("_orig", "_mask")) for key in model.state_dict())


def test_a_model_is_operated_on_by_one_surgeon_at_a_time():
    model, _ = fresh()
    surgeon = dns.Surgeon(model)
    with pytest.raises(ValueError, match="already masked"):
        dns.Surgeon(model)
    surgeon.remove()
    with pytest.raises(RuntimeError, match="masks were removed"):
        surgeon.step()  # never a silent no-op
    dns.Surgeon(model)  # after remove(), surgery can start again
    with pytest.raises(ValueError, match="no Conv2d or Linear layer"):
        dns.Surgeon(nn.Sequential(nn.ReLU()))


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## DNS in your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, data_root, capsys):
    code = readme_example()
    assert 10 <= len(code.strip().splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DNS_DATA", str(data_root))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "| **total** | **266,610** |" in printed and "Compression: **" in printed
    model = namespace["model"]
    assert not any(key.endswith(("_orig", "_mask")) for key in model.state_dict())  # removed: an ordinary model
    remaining = sum(int(p.count_nonzero()) for p in model.parameters())
    assert remaining < 0.5 * 266610
    blank = copy.deepcopy(model)
    for p in blank.parameters():
        p.data.zero_()
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(dns.load(tmp_path / "mlp.dns", model=blank)(x), model.eval()(x))


def test_a_resnet_with_batchnorm_by_patterns():
    from dns.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    surgeon = dns.Surgeon(model, c=0.5, exclude=["conv1", "fc"], c_per_layer={"layer3.*": 1.0, "*.conv2": 0.0},
                          gamma=0.0)
    gen = torch.Generator().manual_seed(0)
    train(model, optimizer, surgeon, [(torch.randn(4, 3, 32, 32, generator=gen), torch.arange(4)) for _ in range(2)])
    rows = {row["name"]: row for row in surgeon.table()}
    assert rows["conv1"]["c"] is None and rows["fc"]["c"] is None and rows["conv1"]["remaining_pct"] == 100
    assert (rows["layer3.2.conv2"]["c"], rows["layer2.2.conv2"]["c"], rows["layer1.0.conv1"]["c"]) == (1.0, 0.0, 0.5)
    assert rows["layer3.0.conv1"]["remaining_pct"] < rows["layer2.0.conv1"]["remaining_pct"] < 100  # c 1 > c 0.5
    dense_rows = surgeon.dense_table()  # BatchNorm: never masked, counted in full
    assert [r["kind"] for r in dense_rows] == ["BatchNorm2d"] * 19 and dense_rows[0]["name"] == "bn1"
    total = surgeon.totals()
    assert total["model_params"] == sum(p.numel() for p in model.parameters()) == 269_722
    assert total["model_remaining"] - total["remaining"] == sum(r["params"] for r in dense_rows) == 1_376
    assert "| BatchNorm2d ×19, not masked | 1,376 | 1,376 | 100.00 % |" in surgeon.markdown()
