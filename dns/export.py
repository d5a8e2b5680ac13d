"""A pruned model that is really small on disk: the `.dns` format, its writer and `load`.

The file keeps, per tensor, only the non-zero entries of W ⊙ T: each as an 8-bit gap to the previous
entry and its value (float32, or float16 on request), as Deep Compression stores its relative indices.
A gap of 255 or more is bridged by one-byte fillers that carry no value. docs/format.md specifies the bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dns.masks import mask_state_dict, plain_state_dict
from dns.files import write_atomically
from dns.checkpoint import fill, load_checkpoint, model_of, trained_dataset
from dns.models import prunable_layers
from dns.sparse import SparseLinear, sparsify

MAGIC, VERSION = b"DNSX", 1
VALUE_TYPES = {"float32": (0, "<f4"), "float16": (1, "<f2")}  # name: (code in the file, little-endian type)
SKIP = 255  # the gap code of a filler: 255 zeros and no entry


def encode(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gap codes uint8, values) of the non-zero entries of a 1-d tensor.

    Code g < 255: the next entry comes after g zeros. Code 255: 255 zeros, and no entry (a filler).
    There is one value per code below 255.
    """
    positions = flat.nonzero().flatten()
    gaps = torch.diff(positions, prepend=torch.tensor([-1])) - 1  # zeros before each entry
    fillers = torch.div(gaps, SKIP, rounding_mode="floor")
    slots = fillers + 1
    codes = torch.full((int(slots.sum()),), SKIP, dtype=torch.uint8)
    codes[torch.cumsum(slots, 0) - 1] = (gaps % SKIP).to(torch.uint8)  # each entry after its fillers
    return codes, flat[positions]


def decode(codes: torch.Tensor, values: torch.Tensor, numel: int) -> torch.Tensor:
    """The dense 1-d tensor of `numel` entries that `encode` described."""
    flat = torch.zeros(numel, dtype=values.dtype)
    codes = codes.long()
    is_entry = codes < SKIP
    if int(is_entry.sum()) != len(values):
        raise ValueError(f"{int(is_entry.sum())} gap codes name an entry but {len(values)} values follow")
    positions = (torch.cumsum(codes + is_entry.long(), 0) - 1)[is_entry]
    if len(positions) and positions[-1] >= numel:
        raise ValueError(f"an entry points past the end of its tensor ({int(positions[-1])} >= {numel})")
    flat[positions] = values
    return flat


def effective_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """W ⊙ T for every parameter of a checkpoint: the dense-with-zeros weights of the pruned model."""
    masks = checkpoint.get("masks") or {}
    return {name: value * masks[name].to(value.dtype) if name in masks else value.clone()
            for name, value in checkpoint["state_dict"].items()}


def to_bytes(checkpoint: dict[str, Any], value_type: str = "float32") -> bytes:
    code, dtype = VALUE_TYPES[value_type]
    tensors, header = [], {"model": checkpoint["model"], "num_classes": checkpoint["num_classes"], "tensors": []}
    if checkpoint.get("model_args"):
        header["model_args"] = checkpoint["model_args"]
    if trained_dataset(checkpoint):
        header["dataset"] = trained_dataset(checkpoint)
    for name, value in effective_state_dict(checkpoint).items():
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked: a step count, no weight (float16 would
            continue                       # not even hold it); `fill` leaves it at the model's own value
        codes, values = encode(value.flatten().float())
        tensors.append(codes.numpy().tobytes() + values.numpy().astype(dtype).tobytes())
        header["tensors"].append({"name": name, "shape": list(value.shape), "codes": len(codes),
                                  "values": len(values)})
    meta = json.dumps(header, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<BBI", VERSION, code, len(meta)) + meta + b"".join(tensors)
    return body + struct.pack("<I", zlib.crc32(body))


def checkpoint_of(model: nn.Module) -> dict[str, Any]:
    """A model of any architecture, masked or not, in the checkpoint form `to_bytes` takes (no registry name)."""
    if any(isinstance(m, SparseLinear) for m in model.modules()):
        raise ValueError("the model has SparseLinear layers, for inference only: save it before dns.sparsify "
                         "(a .dns file loads sparse with dns.load(path, sparse=True))")
    return {"model": None, "num_classes": None,
            "state_dict": {k: v.detach().cpu() for k, v in plain_state_dict(model).items()},
            "masks": {k: v.cpu() for k, v in mask_state_dict(model).items()}}


def save(source: dict[str, Any] | nn.Module, path: str | Path, value_type: str = "float32") -> int:
    """Write the compact file of a pruned model: a checkpoint, or an `nn.Module` (masked by a `dns.Surgeon`, or
    after its `remove()`); returns the file's size in bytes. `dns.load` reads it back."""
    checkpoint = checkpoint_of(source) if isinstance(source, nn.Module) else source
    data = to_bytes(checkpoint, value_type)
    write_atomically(path, lambda tmp: tmp.write_bytes(data))
    return len(data)


def read(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, {name: dense tensor}) of a `.dns` file's bytes; ValueError (one line) if damaged."""
    if len(data) < 14 or data[:4] != MAGIC:
        raise ValueError("not a .dns file (bad magic bytes)")
    if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise ValueError("the file is damaged or truncated (checksum mismatch)")
    version, code, meta_len = struct.unpack("<BBI", data[4:10])
    if version != VERSION:
        raise ValueError(f"format version {version} is not supported (this reader knows {VERSION})")
    types = dict(VALUE_TYPES.values())
    if code not in types:
        raise ValueError(f"unknown value type {code}")
    dtype = np.dtype(types[code])
    size = dtype.itemsize
    header = json.loads(data[10:10 + meta_len])
    pos, tensors = 10 + meta_len, {}
    for entry in header["tensors"]:
        n_codes, n_values, numel = entry["codes"], entry["values"], 1
        for d in entry["shape"]:
            numel *= d
        if pos + n_codes + n_values * size > len(data) - 4:
            raise ValueError(f"the file ends inside tensor {entry['name']}")
        codes = torch.from_numpy(np.frombuffer(data, np.uint8, n_codes, pos).copy())
        values = torch.from_numpy(np.frombuffer(data, dtype, n_values, pos + n_codes).astype(np.float32))
        tensors[entry["name"]] = decode(codes, values, numel).view(entry["shape"])
        pos += n_codes + n_values * size
    return header, tensors


def load(path: str | Path, model: nn.Module | None = None, sparse: bool = False) -> nn.Module:
    """A plain PyTorch model (no masks, no wrappers) in eval mode, from a `.dns` file or a dns checkpoint (.pt):
    its weights (W ⊙ T) loaded into `model`, or into the `dns.models` architecture the file names.

    sparse=True: for inference on the CPU, each fully connected layer with at most `dns.sparse.MAX_DENSITY`
    non-zeros becomes a `dns.SparseLinear` (compressed rows; same outputs, faster); conv layers stay dense.
    """
    if is_dns_file(path):
        header, tensors = read(Path(path).read_bytes())
    else:
        try:
            header = load_checkpoint(path)
        except ValueError:
            raise ValueError(f"{path} is neither a .dns file nor a dns checkpoint") from None
        tensors = effective_state_dict(header)
    if model is None:
        if header["model"] is None:
            raise ValueError(f"{path} holds a model of your own: pass it, dns.load(path, model=YourModel())")
        model = model_of(header)
    model = fill(model, tensors).eval()
    return sparsify(model) if sparse else model


def as_checkpoint(path: str | Path) -> dict[str, Any]:
    """A `.dns` file in checkpoint form (dense-with-zeros weights, masks = non-zero), e.g. for dns-eval."""
    header, tensors = read(Path(path).read_bytes())
    if header["model"] is None:
        raise ValueError(f"{path} holds a model of your own, no dns.models architecture: evaluate it in Python "
                         f"(dns.load(path, model=YourModel()))")
    with torch.device("meta"):  # masks belong to the conv and fc layers' weights and biases, not to BatchNorm
        prunable = {f"{layer}.{key}" for layer in prunable_layers(model_of(header)) for key in ("weight", "bias")}
    return {"model": header["model"], "num_classes": header["num_classes"], "model_args": header.get("model_args"),
            "dataset": header.get("dataset"), "state_dict": tensors,
            "masks": {name: t != 0 for name, t in tensors.items() if name in prunable}, "layers": {}}


def is_dns_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:  # no such file, a directory: not a .dns file (the reader that follows says what is wrong)
        return False


def dense_bytes(checkpoint: dict[str, Any]) -> int:
    """The size of the model's float tensors (parameters, BatchNorm's statistics) as dense float32."""
    return 4 * sum(t.numel() for t in checkpoint["state_dict"].values() if t.is_floating_point())


def byte_report(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Sizes on disk: dense float32 weights against the .dns file with float32 and float16 values."""
    dense, f32 = dense_bytes(checkpoint), len(to_bytes(checkpoint, "float32"))
    # the float16 file differs only in its values, two bytes narrower each: one per non-zero entry
    stored = sum(int(t.count_nonzero()) for t in effective_state_dict(checkpoint).values())
    f16 = f32 - 2 * stored
    return {"dense_float32": dense, "dns_float32": f32, "dns_float16": f16,
            "ratio_float32": dense / f32, "ratio_float16": dense / f16}
