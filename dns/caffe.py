"""Read the authors' Caffe models (binary `NetParameter` protobufs) without Caffe or protobuf.

Only the few fields needed are decoded, by field number from caffe.proto of the authors' fork
(yiwenguo/Dynamic-Network-Surgery, src/caffe/proto/caffe.proto):

    NetParameter     name = 1, layer = 100 (LayerParameter)
    LayerParameter   name = 1, type = 2, blobs = 7 (BlobProto),
                     cconvolution_param = 140, cinner_product_param = 141 (the DNS settings)
    BlobProto        data = 5 (float, packed or not), shape = 7 (BlobShape: dim = 1),
                     legacy num / channels / height / width = 1 / 2 / 3 / 4
    C*Parameter      gamma = 1, power = 2, iter_stop = 3, c_rate = 4 (floats)

A DNS layer stores [W, b] (released pruned models: W ⊙ T already applied) or [W, b, T_W, T_b] (a raw
training snapshot).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

import torch

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5
DNS_PARAMS = {140: "cconvolution_param", 141: "cinner_product_param"}
DNS_SETTINGS = {1: "gamma", 2: "power", 3: "iter_stop", 4: "c_rate"}


class CaffeFormatError(ValueError):
    """The bytes are not a NetParameter this reader understands."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CaffeFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeFormatError("varint longer than 64 bits")


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message, in order.

    The value is an int for varints and a memoryview of the raw bytes otherwise.
    """
    buf = memoryview(buf)
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            value, pos = buf[pos:pos + size], pos + size
        elif wire == BYTES:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise CaffeFormatError(f"unsupported wire type {wire} (field {number})")
        if pos > len(buf):
            raise CaffeFormatError(f"field {number} runs past the end of the message")
        yield number, wire, value


def _packed_varints(value: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


@dataclass
class Blob:
    shape: list[int]
    data: torch.Tensor  # float32, shaped

    @classmethod
    def parse(cls, buf: memoryview) -> "Blob":
        chunks: list[bytes] = []
        shape: list[int] = []
        legacy: dict[int, int] = {}
        for number, wire, value in fields(buf):
            if number == 5:  # data: one packed run, or single fixed32 floats
                chunks.append(bytes(value))
            elif number == 7:  # BlobShape
                for n, w, v in fields(value):
                    if n == 1:
                        shape += _packed_varints(v) if w == BYTES else [v]
            elif number in (1, 2, 3, 4) and wire == VARINT:
                legacy[number] = value
        if not shape and legacy:
            shape = [legacy.get(n, 1) for n in (1, 2, 3, 4)]
        raw = b"".join(chunks)
        count = len(raw) // 4
        expected = 1
        for d in shape:
            expected *= d
        if count != expected:
            raise CaffeFormatError(f"blob of shape {shape} holds {count} floats, not {expected}")
        data = torch.tensor(struct.unpack(f"<{count}f", raw), dtype=torch.float32).reshape(shape)
        return cls(shape, data)


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[Blob] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)  # DNS: gamma, power, iter_stop, c_rate

    @classmethod
    def parse(cls, buf: memoryview) -> "CaffeLayer":
        layer = cls(name="", type="")
        for number, wire, value in fields(buf):
            if number == 1:
                layer.name = bytes(value).decode()
            elif number == 2:
                layer.type = bytes(value).decode()
            elif number == 7:
                layer.blobs.append(Blob.parse(value))
            elif number in DNS_PARAMS:
                for n, w, v in fields(value):
                    if n in DNS_SETTINGS and w == FIXED32:
                        layer.settings[DNS_SETTINGS[n]] = struct.unpack("<f", v)[0]
        return layer


def read_net(data: bytes) -> tuple[str, list[CaffeLayer]]:
    """The net's name and its layers (field 100). Raises CaffeFormatError on anything else."""
    name, layers = "", []
    for number, wire, value in fields(data):
        if number == 1 and wire == BYTES:
            name = bytes(value).decode(errors="replace")
        elif number == 100 and wire == BYTES:
            layers.append(CaffeLayer.parse(value))
        elif number == 2:
            raise CaffeFormatError("V1 'layers' (field 2) are not supported: upgrade the model with Caffe's "
                                   "upgrade_net_proto_binary")
    if not layers:
        raise CaffeFormatError("no layers found: not a Caffe NetParameter")
    return name, layers


PRUNABLE_TYPES = {"Convolution": "conv", "CConvolution": "conv", "InnerProduct": "fc", "CInnerProduct": "fc"}


def to_checkpoint(layers: list[CaffeLayer], model_name: str, source: str) -> dict:
    """The content of a dns checkpoint for `model_name`, its layers taken from the Caffe layers by order.

    Masks come from the mask blobs when the file has them, else from the non-zero weights (the released
    pruned models store W ⊙ T). A Caffe layer of unknown type or a shape that does not fit is an error.
    """
    from dns.models import get_model, layer_kind, prunable_layers

    sources = [layer for layer in layers if layer.blobs]
    num_classes = sources[-1].blobs[0].shape[0] if sources else 10  # the width of the last layer
    targets = prunable_layers(get_model(model_name, num_classes=num_classes))
    for layer in sources:
        if layer.type not in PRUNABLE_TYPES:
            raise CaffeFormatError(f"Caffe layer {layer.name!r} of type {layer.type} has weights, but only "
                                   f"{', '.join(PRUNABLE_TYPES)} layers can be imported")
    if len(sources) != len(targets):
        raise CaffeFormatError(f"{source} has {len(sources)} layers with weights ({', '.join(l.name for l in sources)}) "
                               f"but {model_name} has {len(targets)} ({', '.join(targets)}): pick the matching --model")
    state, masks, settings, names = {}, {}, {}, {}
    for caffe_layer, (name, module) in zip(sources, targets.items()):
        if PRUNABLE_TYPES[caffe_layer.type] != layer_kind(module):
            raise CaffeFormatError(f"Caffe layer {caffe_layer.name!r} ({caffe_layer.type}) cannot become "
                                   f"{model_name}'s {layer_kind(module)} layer {name!r}: pick the matching --model")
        blobs = caffe_layer.blobs
        if len(blobs) not in (2, 4):
            raise CaffeFormatError(f"Caffe layer {caffe_layer.name!r} has {len(blobs)} blobs; expected W, b "
                                   f"and optionally their two masks")
        for key, blob, mask_blob in (("weight", blobs[0], blobs[2] if len(blobs) == 4 else None),
                                     ("bias", blobs[1], blobs[3] if len(blobs) == 4 else None)):
            expected = list(getattr(module, key).shape)
            if blob.shape != expected:
                raise CaffeFormatError(f"Caffe layer {caffe_layer.name!r} {key} has shape {blob.shape}, but "
                                       f"{model_name}'s {name}.{key} expects {expected}: pick the matching --model")
            state[f"{name}.{key}"] = blob.data
            masks[f"{name}.{key}"] = (mask_blob.data != 0) if mask_blob is not None else (blob.data != 0)
        # Caffe stores floats: round to float32's 7 digits so that 1e-4 reads as 1e-4
        dns = {k: float(f"{v:.7g}") for k, v in caffe_layer.settings.items()}
        settings[name] = {"c": dns.get("c_rate"), "iter_stop": int(dns["iter_stop"]) if "iter_stop" in dns else None,
                          "gamma": dns.get("gamma"), "power": dns.get("power"), "pruned": 0, "spliced": 0}
        names[name] = caffe_layer.name
    return {"model": model_name, "num_classes": num_classes,
            "state_dict": state, "masks": masks, "layers": settings, "stage": "imported",
            "source": {"file": source, "caffe_layers": names}}
