"""An ONNX face-recognition graph as a trainable PyTorch backbone, and back to ONNX.

`wb train --init onnx:PATH` fine-tunes a pretrained recogniser (MobileFaceNet,
an InsightFace ResNet export) without torchvision: the graph is run node by
node with torch operations, its weights become parameters (BatchNorm running
statistics become buffers), so gradients reach every weight. The operators are
the ones recognition graphs use (OPS); any other is a one-line error naming it.

The module takes the workbench's input, (x - 127.5) / 127.5 in NCHW, and
rescales it to what the graph expects (its metadata, a graph that normalises
itself, or InsightFace's default). `to_onnx()` writes the same graph with the
trained weights (and that scaling as metadata), so the export is the original
model, fine-tuned. Checkpoints keep a weightless copy of the graph
(`skeleton`): their state dict holds the weights.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from workbench.errors import WorkbenchError
from workbench.faces.onnx_session import recogniser_norm

# Inputs of these operators that are learned weights (position in the node's inputs).
TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "PRelu": (1,), "BatchNormalization": (1, 2)}
RESHAPING = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose"}
WEIGHTLESS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, group: int = 1,
          pads: list[int] | None = None, strides: list[int] | None = None,
          dilations: list[int] | None = None, auto_pad: bytes = b"NOTSET", **_: Any) -> torch.Tensor:
    if auto_pad not in (b"NOTSET", "NOTSET"):
        raise WorkbenchError(f"Conv with auto_pad={auto_pad!r} is not supported: export with explicit pads")
    pads = pads or [0] * 4
    half = len(pads) // 2
    if pads[:half] != pads[half:]:  # ONNX: begins then ends; torch pads both sides alike
        x = F.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    return F.conv2d(x, w, b, stride=strides or 1, padding=pads[:half], dilation=dilations or 1, groups=group)


def _gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, *, alpha: float = 1.0,
          beta: float = 1.0, transA: int = 0, transB: int = 0) -> torch.Tensor:
    y = alpha * ((a.t() if transA else a) @ (b.t() if transB else b))
    return y if c is None else y + beta * c


def _reshape(x: torch.Tensor, shape: torch.Tensor, *, allowzero: int = 0) -> torch.Tensor:
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _gather(data: torch.Tensor, idx: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    axis = axis % data.dim()
    flat = torch.index_select(data, axis, (idx.reshape(-1) % data.shape[axis]).long())
    return flat.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))


def _unsqueeze(x: torch.Tensor, axes_input: torch.Tensor | None = None, *,
               axes: list[int] | None = None) -> torch.Tensor:
    wanted = _ints(axes_input) if axes_input is not None else list(axes or [])
    rank = x.dim() + len(wanted)
    for axis in sorted(a % rank for a in wanted):
        x = x.unsqueeze(axis)
    return x


def _squeeze(x: torch.Tensor, axes_input: torch.Tensor | None = None, *,
             axes: list[int] | None = None) -> torch.Tensor:
    wanted = _ints(axes_input) if axes_input is not None else list(axes or [])
    if not wanted:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in wanted))


def _clip(x: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None, *,
          min: float | None = None, max: float | None = None) -> torch.Tensor:
    return torch.clamp(x, float(low) if low is not None else min, float(high) if high is not None else max)


def _shape(x: torch.Tensor, *, start: int = 0, end: int | None = None) -> torch.Tensor:
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, b: torch.matmul(a, b),
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Relu": lambda x: F.relu(x),
    "PRelu": lambda x, slope: torch.where(x >= 0, x, x * slope),
    "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha),
    "Sigmoid": lambda x: torch.sigmoid(x),
    "Clip": _clip,
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "Flatten": lambda x, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Reshape": _reshape,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "Transpose": lambda x, perm: x.permute(*perm),
    "Identity": lambda x: x,
    "Dropout": lambda x, *_, **__: x,  # inference graphs: the identity
    "BatchNormalization": None,  # needs the module (training mode, running statistics)
    "Constant": None,  # folded when the module is built
}


def _trainable(graph: onnx.GraphProto) -> set[str]:
    """Initializers that reach a weight input of TRAINABLE, directly or through shape-only nodes
    (exporters route PRelu slopes through Unsqueeze, shared weights through Identity)."""
    producer = {out: node for node in graph.node for out in node.output}
    found = set()
    for node in graph.node:
        for i in TRAINABLE.get(node.op_type, ()):
            name = node.input[i] if i < len(node.input) else ""
            while name in producer and producer[name].op_type in RESHAPING:
                name = producer[name].input[0]
            found.add(name)
    return found


def _copy(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    out.name = name
    return out


def _untangle(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give shared tensors their own copies where sharing would change training: exporters
    deduplicate equal initializers (Identity nodes, or one name in several places), so a BatchNorm
    scale of ones may also be another layer's running variance. Idempotent."""
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    added, kept = [], []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = _copy(inits[node.input[0]], node.output[0])
            added.append(inits[node.output[0]])
        else:
            kept.append(node)
    uses = Counter(name for node in kept for name in node.input)
    weights = {n.input[i] for n in kept for i in TRAINABLE.get(n.op_type, ()) if i < len(n.input)}
    for index, node in enumerate(kept):
        for slot in (3, 4) if node.op_type == "BatchNormalization" else ():
            name = node.input[slot]
            if name in inits and (uses[name] > 1 or name in weights):
                uses[name] -= 1
                added.append(_copy(inits[name], f"{name}/bn{index}.{slot}"))
                node.input[slot] = added[-1].name
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(added)
    return model


def _has_data(t: onnx.TensorProto) -> bool:
    return bool(t.raw_data or t.float_data or t.double_data or t.int32_data or t.int64_data
                or t.data_location == onnx.TensorProto.EXTERNAL) or 0 in t.dims


class OnnxBackbone(nn.Module):
    def __init__(self, model: onnx.ModelProto, norm: tuple[float, float] | None = None):
        super().__init__()
        unsupported = sorted({n.op_type for n in model.graph.node} - set(OPS))
        if unsupported:
            raise WorkbenchError(f"cannot fine-tune this ONNX model: unsupported operators "
                                 f"{', '.join(unsupported)} (supported: {', '.join(sorted(OPS))})")
        self.norm = norm or recogniser_norm(model)
        self.model = _untangle(model)
        graph = self.model.graph
        initial = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initial]
        if len(inputs) != 1 or not graph.output:
            raise WorkbenchError("a recognition model needs one image input and an output")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        trainable = _trainable(graph)
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}  # ONNX name -> parameter or buffer name
        for i, tensor in enumerate(graph.initializer):
            value = torch.from_numpy(numpy_helper.to_array(tensor).copy()) if _has_data(tensor) else \
                torch.zeros(tuple(tensor.dims), dtype=torch.float32)
            key = f"w{i}"
            if tensor.name in trainable and value.is_floating_point():
                self.params[key] = nn.Parameter(value.float())
            else:
                self.register_buffer(key, value)
            self._keys[tensor.name] = key
        for i, node in enumerate(graph.node):
            if node.op_type == "Constant":
                self.register_buffer(f"c{i}", self._constant(node), persistent=False)
                self._keys[node.output[0]] = f"c{i}"
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node
                      if n.op_type != "Constant"]
        mean, std = self.norm
        self.scale, self.shift = 127.5 / std, (127.5 - mean) / std

    @staticmethod
    def _constant(node: onnx.NodeProto) -> torch.Tensor:
        attrs = _attrs(node)
        if "value" in attrs:
            return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
        for name in ("value_float", "value_floats", "value_int", "value_ints"):
            if name in attrs:
                return torch.tensor(attrs[name])
        raise WorkbenchError(f"Constant node {node.name!r} has no supported value attribute")

    @classmethod
    def load(cls, path: str | Path, norm: tuple[float, float] | None = None) -> OnnxBackbone:
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf's DecodeError and friends: a file that is not ONNX
            raise WorkbenchError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
        return cls(model, norm)

    def _tensor(self, name: str, env: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not name:
            return None  # an omitted optional input
        if name in env:
            return env[name]
        key = self._keys[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.scale, self.shift) != (1.0, 0.0):
            x = x * self.scale + self.shift
        env = {self.input_name: x}
        for op, inputs, outputs, attrs in self.nodes:
            args = [self._tensor(name, env) for name in inputs]
            if op == "BatchNormalization":
                x_in, weight, bias, mean, var = args
                env[outputs[0]] = F.batch_norm(
                    x_in, mean, var, weight, bias, training=self.training,
                    momentum=1.0 - attrs.get("momentum", 0.9), eps=attrs.get("epsilon", 1e-5))
                continue
            while args and args[-1] is None:
                args.pop()
            env[outputs[0]] = OPS[op](*args, **attrs)
        return env[self.output_name]

    @property
    def input_size(self) -> int:
        """The graph's input side (112 for recognition models; 112 when the graph leaves it open)."""
        graph_input = next(i for i in self.model.graph.input if i.name == self.input_name)
        dims = graph_input.type.tensor_type.shape.dim
        return dims[2].dim_value if len(dims) == 4 and dims[2].dim_value > 0 else 112

    def output_dim(self) -> int:
        was = self.training
        self.eval()
        with torch.no_grad():
            side = self.input_size
            dim = int(self(torch.zeros(1, 3, side, side)).reshape(1, -1).shape[1])
        self.train(was)
        return dim

    def _weights(self) -> dict[str, np.ndarray]:
        out = {}
        for name, key in self._keys.items():
            if key in self.params:
                out[name] = self.params[key].detach().cpu().numpy()
            elif key in self._buffers and key.startswith("w"):
                out[name] = self._buffers[key].detach().cpu().numpy()
        return out

    def to_onnx(self) -> onnx.ModelProto:
        """The source graph with this module's weights and running statistics, and its input
        scaling as metadata (`input_mean`, `input_std`)."""
        model = copy.deepcopy(self.model)
        weights = self._weights()
        for i, tensor in enumerate(model.graph.initializer):
            if tensor.name in weights:
                value = weights[tensor.name].astype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, tensor.name))
        meta = {p.key: p.value for p in model.metadata_props}
        meta.update(input_mean=f"{self.norm[0]:g}", input_std=f"{self.norm[1]:g}")
        onnx.helper.set_model_props(model, meta)
        return model

    @functools.cached_property
    def skeleton(self) -> bytes:
        """The graph without its float weights (the checkpoint's state dict holds them); made once,
        not at every checkpoint (the graph never changes, only the weights do)."""
        model = copy.deepcopy(self.model)
        for i, tensor in enumerate(model.graph.initializer):
            if tensor.data_type in WEIGHTLESS:
                stripped = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
                model.graph.initializer[i].CopyFrom(stripped)
        return model.SerializeToString()

    @classmethod
    def from_skeleton(cls, data: bytes, norm: tuple[float, float]) -> OnnxBackbone:
        return cls(onnx.load_from_string(data), norm)
