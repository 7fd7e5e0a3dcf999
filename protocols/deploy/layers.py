"""A torch module as a list of layers in execution order: analog matrices and digital operations.

* **Analog layers** (:class:`AnalogLayer`): ``nn.Linear`` (matrix ``W = weight.T``, shape (n_in,
  n_out): crossbar rows are inputs, as everywhere in hil) and ``nn.Conv2d`` with ``groups=1``,
  ``dilation=1``, zero padding and any stride (im2col: ``W = weight.reshape(out, -1).T``, rows in
  ``F.unfold`` order: channel, kernel row, kernel column - aihwkit's ``AnalogConv2d`` tile shape
  ``(in_channels / groups) kh kw`` [AIHW nn/modules/conv.py]). A ``BatchNorm1d/2d`` right after
  one is folded into its weights and bias (running statistics, eval mode).
* **Digital operations** (:class:`DigitalOp`): ReLU, max and average pooling (2-D), flatten;
  ``Dropout`` and ``Identity`` are dropped. They run in float64 on the host between chip calls
  (as the FPGA does on HERMES [NE23]).

The order comes from ``torch.fx.symbolic_trace`` (the [ADV25] deployment stack traces with
torch.fx); a module fx cannot trace falls back to its leaf modules in registration order, which is
right for chains written in that order (the result records which was used). Branches (residual
connections, concatenation) are refused: the digital glue is a chain.

Weight matrices that come as bare arrays have no layout of their own: :func:`layers_from_matrices`
takes them only with ``layout="torch"`` ((out, in), transposed here) or ``layout="in_out"``.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hil.errors import ChipInputError

DigitalKind = Literal["relu", "maxpool", "avgpool", "flatten"]

SUPPORTED = ("Linear", "Conv2d (groups=1, dilation=1, zero padding)", "BatchNorm1d/2d after Linear/Conv2d (folded)",
             "ReLU", "MaxPool2d", "AvgPool2d", "Flatten", "Dropout/Identity (dropped)")


@dataclass(frozen=True)
class ConvGeom:
    """Geometry of a Conv2d as im2col: kernel, stride and padding (pixels), channels."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an (h, w) input."""
        return ((h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1)


@dataclass
class AnalogLayer:
    """One matrix layer: ``weight`` (n_in, n_out) float64, ``bias`` (n_out,) float64 (zeros if none)."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    conv: ConvGeom | None = None
    folded: list[str] = field(default_factory=list)  # names of BatchNorms folded into it

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.weight.shape[0]), int(self.weight.shape[1]))

    @property
    def kind(self) -> str:
        return "conv2d" if self.conv is not None else "linear"


@dataclass(frozen=True)
class DigitalOp:
    """A host operation between chip calls: ``kind`` and its parameters (pooling kernel, stride, padding)."""

    name: str
    kind: DigitalKind
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    start_dim: int = 1


Layer = AnalogLayer | DigitalOp


@dataclass
class Converted:
    """The layers of a model in execution order and how they were found (``fx`` or ``modules``)."""

    layers: list[Layer]
    method: Literal["fx", "modules"]
    input_shape: tuple[int, ...] | None = None

    @property
    def analog(self) -> list[AnalogLayer]:
        return [la for la in self.layers if isinstance(la, AnalogLayer)]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    return (t[0], t[1]) if len(t) == 2 else (t[0], t[0])


def _linear(name: str, m: nn.Linear) -> AnalogLayer:
    w = m.weight.detach().double().cpu().numpy().T.copy()
    b = m.bias.detach().double().cpu().numpy().copy() if m.bias is not None else np.zeros(w.shape[1])
    return AnalogLayer(name, w, b)


def _conv(name: str, m: nn.Conv2d) -> AnalogLayer:
    if m.groups != 1:
        raise ChipInputError(f"layer {name!r}: Conv2d with groups={m.groups} is not supported (groups=1 only); "
                             "split a grouped convolution into separate Conv2d layers.")
    if _pair(m.dilation) != (1, 1):
        raise ChipInputError(f"layer {name!r}: Conv2d with dilation={m.dilation} is not supported (dilation=1 only).")
    if m.padding_mode != "zeros":
        raise ChipInputError(f"layer {name!r}: Conv2d padding_mode={m.padding_mode!r} is not supported ('zeros' only).")
    if isinstance(m.padding, str):
        if m.padding != "valid":
            raise ChipInputError(f"layer {name!r}: Conv2d padding={m.padding!r}; give the padding in pixels (or 'valid').")
        pad = (0, 0)
    else:
        pad = _pair(m.padding)
    wt = m.weight.detach().double().cpu().numpy()
    w = wt.reshape(wt.shape[0], -1).T.copy()
    b = m.bias.detach().double().cpu().numpy().copy() if m.bias is not None else np.zeros(w.shape[1])
    geom = ConvGeom(int(m.in_channels), int(m.out_channels), _pair(m.kernel_size), _pair(m.stride), pad)
    return AnalogLayer(name, w, b, geom)


def _fold_bn(layer: AnalogLayer, name: str, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into the preceding analog layer: per output channel scale and shift."""
    if bn.running_mean is None or bn.running_var is None:
        raise ChipInputError(f"layer {name!r}: BatchNorm without running statistics cannot be folded; "
                             "use track_running_stats=True.")
    if bn.num_features != layer.shape[1]:
        raise ChipInputError(f"layer {name!r}: BatchNorm over {bn.num_features} features follows {layer.name!r} "
                             f"with {layer.shape[1]} outputs.")
    var = bn.running_var.detach().double().cpu().numpy()
    mean = bn.running_mean.detach().double().cpu().numpy()
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(var)
    beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(var)
    s = gamma / np.sqrt(var + bn.eps)
    layer.weight = layer.weight * s[None, :]
    layer.bias = (layer.bias - mean) * s + beta
    layer.folded.append(name)


def _pool(name: str, m: nn.Module, kind: DigitalKind) -> DigitalOp:
    if getattr(m, "ceil_mode", False) or _pair(getattr(m, "dilation", 1)) != (1, 1):
        raise ChipInputError(f"layer {name!r}: pooling with ceil_mode or dilation is not supported.")
    if kind == "avgpool" and not getattr(m, "count_include_pad", True):
        raise ChipInputError(f"layer {name!r}: AvgPool2d(count_include_pad=False) is not supported.")
    k = _pair(m.kernel_size)  # type: ignore[arg-type]
    s = _pair(m.stride if m.stride is not None else m.kernel_size)  # type: ignore[arg-type]
    return DigitalOp(name, kind, k, s, _pair(m.padding))  # type: ignore[arg-type]


def _module_layer(name: str, m: nn.Module, layers: list[Layer]) -> None:
    """Append the layer(s) for leaf module ``m`` (or fold it into the last analog layer)."""
    if isinstance(m, nn.Linear):
        layers.append(_linear(name, m))
    elif isinstance(m, nn.Conv2d):
        layers.append(_conv(name, m))
    elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        if not layers or not isinstance(layers[-1], AnalogLayer):
            raise ChipInputError(f"layer {name!r}: a BatchNorm must follow a Linear or Conv2d to be folded; "
                                 f"here it follows {layers[-1].name if layers else 'the input'!r}.")
        _fold_bn(layers[-1], name, m)
    elif isinstance(m, nn.ReLU):
        layers.append(DigitalOp(name, "relu"))
    elif isinstance(m, nn.MaxPool2d):
        layers.append(_pool(name, m, "maxpool"))
    elif isinstance(m, nn.AvgPool2d):
        layers.append(_pool(name, m, "avgpool"))
    elif isinstance(m, nn.Flatten):
        if m.end_dim != -1:
            raise ChipInputError(f"layer {name!r}: Flatten(end_dim={m.end_dim}) is not supported (end_dim=-1 only).")
        layers.append(DigitalOp(name, "flatten", start_dim=int(m.start_dim)))
    elif isinstance(m, nn.Dropout | nn.Identity):
        return
    else:
        raise ChipInputError(f"layer {name!r} ({type(m).__name__}) is not supported; supported layers: {', '.join(SUPPORTED)}.")


def _fx_layers(model: nn.Module) -> list[Layer]:
    import torch.fx

    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    layers: list[Layer] = []
    prev: Any = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            if node.op == "placeholder":
                prev = node
            continue
        data_args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if len(data_args) != 1 or data_args[0] is not prev or len(prev.users) != 1:
            raise ChipInputError(f"operation {node.name!r} does not continue a simple chain (branches, residual "
                                 "connections and multiple inputs are not supported).")
        name = str(node.target) if node.op == "call_module" else node.name
        if node.op == "call_module":
            _module_layer(name, mods[node.target], layers)
        elif (node.op == "call_function" and node.target in (torch.relu, nn.functional.relu)) or (
                node.op == "call_method" and node.target == "relu"):
            layers.append(DigitalOp(name, "relu"))
        elif (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise ChipInputError(f"operation {node.name!r}: flatten(start_dim={start}) would merge the batch axis; "
                                     "use start_dim=1.")
            layers.append(DigitalOp(name, "flatten", start_dim=1))
        elif node.op == "call_method" and node.target in ("view", "reshape") and node.args[2:] == (-1,):
            layers.append(DigitalOp(name, "flatten", start_dim=1))
        elif node.op == "call_function" and node.target in (nn.functional.max_pool2d, nn.functional.avg_pool2d):
            k = node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"]
            s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or k
            kind: DigitalKind = "maxpool" if node.target is nn.functional.max_pool2d else "avgpool"
            layers.append(DigitalOp(name, kind, _pair(k), _pair(s), _pair(node.kwargs.get("padding", 0))))
        elif node.op == "call_function" and node.target in (operator.getitem,):
            raise ChipInputError(f"operation {node.name!r} (indexing) is not supported.")
        else:
            raise ChipInputError(f"operation {node.name!r} ({node.op} {getattr(node.target, '__name__', node.target)}) "
                                 f"is not supported; supported layers: {', '.join(SUPPORTED)}.")
        prev = node
    return layers


def convert_model(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> Converted:
    """Layers of ``model`` in execution order (torch.fx, else leaf modules in registration order).

    ``input_shape``: one sample's shape (no batch axis), checked by running a zero sample through
    the digital reference; None skips the check. Raises :class:`ChipInputError` for an unsupported
    layer, naming it and the supported ones.
    """
    model = copy.deepcopy(model).eval()
    method: Literal["fx", "modules"] = "fx"
    try:
        layers = _fx_layers(model)
    except ChipInputError:
        raise
    except Exception:  # fx cannot trace data-dependent control flow: fall back to the module order
        method = "modules"
        layers = []
        for name, m in model.named_modules():
            if name and not list(m.children()):
                _module_layer(name, m, layers)
    if not any(isinstance(la, AnalogLayer) for la in layers):
        raise ChipInputError("the model has no Linear or Conv2d layer: nothing to put on the chip.")
    conv = Converted(layers, method, tuple(input_shape) if input_shape is not None else None)
    if input_shape is not None:
        output_shapes(conv, tuple(input_shape))
    return conv


def layers_from_matrices(weights: list[np.ndarray], biases: list[np.ndarray] | None, *,
                         layout: Literal["torch", "in_out"] | None, activation: Literal["relu", "none"] = "relu") -> Converted:
    """An MLP from bare weight matrices: ``layout`` must say whether they are torch's (out, in) or (in, out).

    Samples are flattened first; ReLU between layers (``activation='relu'``), none after the last. A
    square matrix cannot show its layout, so there is no default.
    """
    if layout not in ("torch", "in_out"):
        raise ChipInputError(f"layout={layout!r}: say how the weight matrices are stored - 'torch' for (out, in) as in "
                             "nn.Linear.weight, 'in_out' for (n_in, n_out) as the chip computes y = x @ W.")
    layers: list[Layer] = [DigitalOp("flatten", "flatten", start_dim=1)]
    for i, w in enumerate(weights):
        arr = np.asarray(w, dtype=np.float64)
        if arr.ndim != 2:
            raise ChipInputError(f"weight matrix {i} has shape {arr.shape}; expected 2-D.")
        arr = arr.T.copy() if layout == "torch" else arr.copy()
        b = np.zeros(arr.shape[1]) if biases is None else np.asarray(biases[i], dtype=np.float64).reshape(-1)
        if b.shape != (arr.shape[1],):
            raise ChipInputError(f"bias {i} has {b.size} values; layer {i} has {arr.shape[1]} outputs (layout={layout!r}).")
        if i:
            prev = [la for la in layers if isinstance(la, AnalogLayer)][-1]
            if prev.shape[1] != arr.shape[0]:
                raise ChipInputError(f"layer {i} takes {arr.shape[0]} inputs but layer {i - 1} gives {prev.shape[1]} "
                                     f"(layout={layout!r}: is that the right layout?).")
            if activation == "relu":
                layers.append(DigitalOp(f"relu{i - 1}", "relu"))
        layers.append(AnalogLayer(f"fc{i}", arr, b))
    return Converted(layers, "modules")


# ------------------------------------------------------------------------------ digital execution (float64)
def im2col(x: np.ndarray, conv: ConvGeom) -> tuple[np.ndarray, tuple[int, int]]:
    """(N, C, H, W) -> patches (N * L, C kh kw) in F.unfold order, and the output (Hout, Wout). A pure copy."""
    if x.ndim != 4 or x.shape[1] != conv.in_channels:
        raise ChipInputError(f"a Conv2d with {conv.in_channels} input channels got input of shape {x.shape}; "
                             "expected (N, C, H, W).")
    ho, wo = conv.out_hw(x.shape[2], x.shape[3])
    if ho < 1 or wo < 1:
        raise ChipInputError(f"input of {x.shape[2]} x {x.shape[3]} pixels is smaller than the {conv.kernel} kernel.")
    cols = nn.functional.unfold(torch.from_numpy(np.ascontiguousarray(x)), conv.kernel, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy().copy(), (ho, wo)


def fold_output(y: np.ndarray, n: int, hw: tuple[int, int]) -> np.ndarray:
    """(N * L, out) -> (N, out, Hout, Wout)."""
    return np.ascontiguousarray(y.reshape(n, hw[0] * hw[1], -1).transpose(0, 2, 1).reshape(n, -1, *hw))


def apply_digital(op: DigitalOp, x: np.ndarray) -> np.ndarray:
    """One digital operation in float64 (elementwise or window max/mean: no reduction across threads)."""
    if op.kind == "relu":
        return np.maximum(x, 0.0)
    if op.kind == "flatten":
        return x.reshape(*x.shape[: op.start_dim], -1)
    if x.ndim != 4:
        raise ChipInputError(f"{op.name!r} ({op.kind}) needs (N, C, H, W) input; got shape {x.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if op.kind == "maxpool":
        out = nn.functional.max_pool2d(t, op.kernel, op.stride, op.padding)
    else:
        out = nn.functional.avg_pool2d(t, op.kernel, op.stride, op.padding)
    return out.numpy().copy()


def matmul_exact(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` in float64 with a fixed summation order (einsum, no BLAS threads): the same bits in every process."""
    return np.einsum("bi,io->bo", x, w, optimize=False)


def run_reference(conv: Converted, x: np.ndarray, *, capture: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """The converted layers in float64 on the host (the digital reference); optionally each analog layer's input
    as a 2-D (rows, n_in) array (im2col patches for a conv)."""
    h = np.asarray(x, dtype=np.float64)
    inputs: list[np.ndarray] = []
    for la in conv.layers:
        if isinstance(la, DigitalOp):
            h = apply_digital(la, h)
            continue
        if la.conv is not None:
            cols, hw = im2col(h, la.conv)
            if capture:
                inputs.append(cols)
            h = fold_output(matmul_exact(cols, la.weight) + la.bias, h.shape[0], hw)
        else:
            if h.ndim != 2 or h.shape[1] != la.shape[0]:
                raise ChipInputError(f"layer {la.name!r} takes {la.shape[0]} inputs; it got shape {tuple(h.shape[1:])} "
                                     "(wrong input shape, or a missing flatten).")
            if capture:
                inputs.append(h)
            h = matmul_exact(h, la.weight) + la.bias
    return h, inputs


def output_shapes(conv: Converted, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per layer, the output shape of one sample of ``input_shape``; raises ChipInputError on a mismatch."""
    h = np.zeros((1, *input_shape))
    shapes = []
    for la in conv.layers:
        h = run_reference(Converted([la], conv.method), h)[0]
        shapes.append(tuple(h.shape[1:]))
    return shapes
