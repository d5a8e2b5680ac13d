"""Sparse inference (dns.sparse): the same outputs as the dense model with the same weights, from every path of
the kernels, for every model, and through dns.load and dns-eval."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dns
from dns import sparse
from dns.checkpoint import save_checkpoint
from dns.export import save
from dns.models import get_model, input_shape, list_models
from dns.sparse import SparseLinear, csr_arrays, row_bounds, sparse_layers, sparsify

EXTRA_ARGS = {"torchvision": {"arch": "resnet18"}}


def close(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """Within 1e-5 of the largest output: float sums in another order, nothing more."""
    scale = float(expected.abs().max()) or 1.0
    return expected.shape == got.shape and float((expected - got).abs().max()) <= 1e-5 * scale


def pruned_linear(inputs: int, outputs: int, density: float, seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(inputs, outputs, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(outputs, inputs) < density)
    return layer


def test_csr_arrays_hold_exactly_the_non_zeros_row_by_row():
    weight = torch.tensor([[0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.5]])
    crow, col, values = csr_arrays(weight)
    assert crow.tolist() == [0, 2, 2, 4] and col.tolist() == [1, 3, 0, 3] and values.tolist() == [2.0, -1.0, 3.0, 0.5]
    assert col.dtype == np.uint16  # 16-bit indices where the inputs allow
    assert csr_arrays(torch.zeros(2, 70_000))[1].dtype == np.int32


def test_row_bounds_split_the_non_zeros_evenly():
    crow = np.array([0, 10, 10, 10, 12, 20, 30, 40])  # rows of 10, 0, 0, 2, 8, 10, 10 non-zeros
    bounds = row_bounds(crow, 2)
    assert bounds.tolist() == [0, 5, 7]  # rows 0-4 hold 20 non-zeros, rows 5-6 the other 20
    assert row_bounds(crow, 4).tolist() == [0, 1, 5, 6, 7]  # 10 | 0+0+2+8 | 10 | 10
    assert row_bounds(np.array([0, 0, 0]), 2).tolist() == [0, 0, 2]  # an empty matrix: one part holds all rows


@pytest.mark.parametrize("inputs, outputs, density", [(784, 300, 0.02), (500, 10, 0.04), (100, 10, 0.0),
                                                      (30, 20, 1.0), (40_000, 20, 0.01), (70_000, 20, 0.01)],
                         ids=["lenet300-fc1", "few-rows", "all-zero", "dense", "uint16-above-32767", "int32-indices"])
@pytest.mark.parametrize("batch", [1, 3, 5, 9, 12, 16, 200])
def test_sparse_linear_matches_the_dense_layer(inputs, outputs, density, batch):
    layer = pruned_linear(inputs, outputs, density)
    sparse_layer = SparseLinear.from_linear(layer)
    assert sparse_layer.values.numel() == int(layer.weight.count_nonzero())
    x = torch.randn(batch, inputs)
    with torch.no_grad():
        assert close(layer(x), sparse_layer(x))


def test_the_threaded_products_match_the_serial_ones(monkeypatch):
    layer = pruned_linear(784, 300, 0.05)
    sparse_layer = SparseLinear.from_linear(layer)
    few_rows = SparseLinear.from_linear(pruned_linear(784, 10, 0.05))
    x1, x3, x9, x64 = torch.randn(1, 784), torch.randn(3, 784), torch.randn(9, 784), torch.randn(64, 784)
    cases = [(sparse_layer, x1), (sparse_layer, x3), (sparse_layer, x9), (sparse_layer, x64), (few_rows, x64)]
    calls = []
    for name in ("_dot_parallel", "_batch_parallel"):  # count the threaded kernels' calls and their chunks
        kernel = getattr(sparse, name)
        monkeypatch.setattr(sparse, name, lambda *a, kernel=kernel, name=name: (calls.append((name, a[-1].tolist())),
                                                                                kernel(*a)))
    with torch.no_grad():
        serial = [m(x) for m, x in cases]
        assert calls == []  # one thread: the serial loops
        monkeypatch.setattr(sparse, "PARALLEL_WORK", 1)  # every product split over the threads
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            parallel = [m(x) for m, x in cases]
        finally:
            torch.set_num_threads(threads)
    # batch 1: two runs of rows; batch 3: the samples split 1 + 2 (rows whole); batches 9 and 64 of 300 rows: two
    # runs of rows, eight samples at a time and in the batched loop; 10 rows: the samples split 32 + 32
    assert [name for name, _ in calls] == ["_dot_parallel", "_dot_parallel", "_batch_parallel", "_batch_parallel",
                                           "_dot_parallel"]
    assert [chunks[0][:2] for _, chunks in calls[:2]] == [[0, 1], [0, 1]] and calls[1][1][1][:2] == [1, 3]
    assert calls[2][1] == calls[3][1] == row_bounds(sparse_layer.crow.numpy(), 2).tolist()
    assert calls[4][1] == [[0, 32, 0, 10], [32, 64, 0, 10]]
    # the same sums in the same order within each row: bitwise equal
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
    assert close(layer(x9).detach(), parallel[2]) and close(layer(x64).detach(), parallel[3])


@pytest.mark.parametrize("shape", [(2, 50), (2, 5, 50)], ids=["few-samples", "batched"])
def test_no_bias_leading_dimensions_and_float64(shape):
    layer = pruned_linear(50, 20, 0.1, bias=False)
    sparse_layer = SparseLinear.from_linear(layer)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert close(layer(x), sparse_layer(x))
        layer, sparse_layer = layer.double(), sparse_layer.double()  # buffers replaced: the kernels follow
        assert close(layer(x.double()), sparse_layer(x.double())) and sparse_layer(x.double()).dtype == torch.float64


def test_copies_follow_their_own_buffers():
    import copy
    import io

    sparse_layer = SparseLinear.from_linear(pruned_linear(50, 20, 0.1))
    x = torch.randn(9, 50)
    with torch.no_grad():
        before = sparse_layer(x)  # the views of the buffers are made
        buffer = io.BytesIO()
        torch.save(sparse_layer, buffer)
        buffer.seek(0)
        for copied in (copy.deepcopy(sparse_layer), torch.load(buffer, weights_only=False)):
            copied.values.mul_(2)
            copied.bias.zero_()
            assert torch.allclose(copied(x), 2 * (before - sparse_layer.bias), atol=1e-5)
        old_bias = sparse_layer.bias
        sparse_layer.bias = torch.zeros(20)  # a buffer replaced
        assert torch.allclose(sparse_layer(x), before - old_bias, atol=1e-6)


def test_misuse_is_a_clear_error(tmp_path):
    sparse_layer = SparseLinear.from_linear(pruned_linear(10, 4, 0.5))
    with pytest.raises(RuntimeError, match="no gradients"):
        sparse_layer(torch.randn(2, 10, requires_grad=True))
    with pytest.raises(RuntimeError, match=r"runs on the CPU in torch.float32 \(its weights' type\); got torch.float64"):
        sparse_layer(torch.randn(2, 10, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="got torch.float32 on meta"):
        sparse_layer(torch.randn(2, 10, device="meta"))
    with pytest.raises(RuntimeError, match=r"inputs of 10 features, got shape \(2, 9\)"):
        sparse_layer(torch.randn(2, 9))
    with pytest.raises(ValueError, match="float32 or float64 weights, got torch.float16"):
        SparseLinear.from_linear(pruned_linear(10, 4, 0.5).half())
    with pytest.raises(ValueError, match="max_density"):
        sparsify(nn.Linear(3, 3), max_density=1.5)
    with pytest.raises(ValueError, match="SparseLinear layers, for inference only: save it before dns.sparsify"):
        dns.save(sparsify(nn.Sequential(nn.Linear(3, 3)), max_density=1.0), tmp_path / "m.dns")
    (tmp_path / "notes.dns").write_text("not a model")
    with pytest.raises(ValueError, match="notes.dns is neither a .dns file nor a dns checkpoint"):
        dns.load(tmp_path / "notes.dns", sparse=True)


def test_attention_keeps_the_projection_it_reads_itself():
    attention = nn.MultiheadAttention(16, 2)
    with torch.no_grad():
        attention.out_proj.weight.zero_()
    sparsify(attention)
    assert type(attention.out_proj) is not SparseLinear
    x = torch.randn(3, 1, 16)
    attention(x, x, x)  # it reads out_proj.weight, which a SparseLinear does not have


def pruned_model(name: str, densities: list[float], seed: int = 0) -> nn.Module:
    """The model with its Linear layers pruned at random to `densities` in turn (cycled), convs to 30 %."""
    torch.manual_seed(seed)
    model = get_model(name, num_classes=10, **EXTRA_ARGS.get(name, {})).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(linears):
            layer.weight.mul_(torch.rand_like(layer.weight) < densities[i % len(densities)])
        for layer in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            layer.weight.mul_(torch.rand_like(layer.weight) < 0.3)
    return model


@pytest.mark.parametrize("densities", [[0.0, 0.02, 1.0], [0.05, 0.005, 0.3]], ids=["zero-sparse-dense", "mixed"])
@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_the_dense_outputs(name, densities):
    import copy

    model = pruned_model(name, densities)
    every = sparsify(copy.deepcopy(model), max_density=1.0)  # every Linear sparse, the all-dense one too
    default = sparsify(copy.deepcopy(model))  # below MAX_DENSITY only
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(sparse_layers(every)) == linears
    assert set(sparse_layers(default)) == {n for n in linears
                                          if model.get_submodule(n).weight.count_nonzero()
                                          <= sparse.MAX_DENSITY * model.get_submodule(n).weight.numel()}
    for batch in (3, 9, 17):  # one dot product per sample and row; eight samples at a time; the loop over the batch
        x = torch.rand(batch, *input_shape(name))
        with torch.no_grad():
            expected = model(x)
            assert close(expected, every(x)) and close(expected, default(x))


def test_a_dns_file_and_a_checkpoint_load_sparse(tmp_path):
    model = pruned_model("lenet300", [0.03])
    checkpoint = {"model": "lenet300", "num_classes": 10, "model_args": {"num_classes": 10},
                  "state_dict": model.state_dict(), "masks": {n: p != 0 for n, p in model.state_dict().items()}}
    save(checkpoint, tmp_path / "m.dns")
    save_checkpoint(tmp_path / "c.pt", **checkpoint)
    dense = dns.load(tmp_path / "m.dns")
    x = torch.rand(7, 1, 28, 28)
    for path in (tmp_path / "m.dns", tmp_path / "c.pt"):
        loaded = dns.load(path, sparse=True)
        assert set(sparse_layers(loaded)) == {"fc1", "fc2", "fc3"} and not list(loaded.parameters())
        with torch.no_grad():
            assert close(dense(x), loaded(x))
    assert torch.equal(dns.load(tmp_path / "c.pt")(x), model(x))  # the dense load of a checkpoint: its weights


def test_dns_eval_sparse_gives_the_dense_error(data_root, tmp_path):
    from dns.caffe import read_net, to_checkpoint

    layers = read_net((data_root / "dns-caffe" / "lenet300100" / "caffe_lenet300100_sparse.caffemodel").read_bytes())[1]
    save(to_checkpoint(layers, "lenet300", "test"), tmp_path / "m.dns")
    exe = Path(sys.executable).with_name("dns-eval")
    run = subprocess.run([str(exe) if exe.exists() else "dns-eval", str(tmp_path / "m.dns"), "--sparse", "--json",
                          f"dataset.root={data_root}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["test"]["final_error"] == 0.0199  # the released model's 199 errors, as dense
    assert list(report["sparse_layers"]) == ["fc1", "fc2", "fc3"]
    assert report["sparse_layers"]["fc1"] == pytest.approx(0.018, abs=0.001)  # the paper's 1.8 %
