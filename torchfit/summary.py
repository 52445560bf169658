"""Keras/torchkeras-style layer table for any ``nn.Module``.

This module owns the model summary, in three steps that can be used on their own:

* :func:`collect_rows` runs one recorded forward pass and returns what it saw as data
  (a list of :class:`LayerRow`), leaving the net exactly as it found it;
* :func:`render` turns rows and totals into the text table;
* :func:`summary` builds the inputs (a dummy batch from ``input_shape``, or the user's
  ``input_data``), computes the totals, prints the table and returns it as a DataFrame.

It leaves everything else to other modules: ``Model.summary`` only delegates here, and device
handling for training lives in ``torchfit.device``.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import pandas as pd
import torch
from torch import nn

from .batch import tensors, to_device

__all__ = ["LayerRow", "collect_rows", "render", "summary"]

# Containers only route calls to their children; a row for them would repeat the children's rows.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# Wrappers that only route a batch to the net they hold: the summary is the held net's.
_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)
# Two samples, not one, so that layers which squeeze or special-case a batch of one
# (BatchNorm in training code, `x.squeeze()`) still see an ordinary batch.
_DUMMY_BATCH = 2
_MB = 1024**2
_COLUMNS = ["Layer (type)", "Output Shape", "Param #"]
_MIN_WIDTHS = (30, 25, 15)

Shape = Union[Sequence[int], Sequence[Sequence[int]]]
# A torch.dtype, a legacy tensor type such as torch.LongTensor (torchkeras 1.x's input_dtype), or
# the name of either ("torch.LongTensor", "int64", "long").
DtypeLike = Union[torch.dtype, type, str]


@dataclasses.dataclass
class LayerRow:
    """One recorded forward call of one layer.

    ``output_shape`` is a list of ints for a tensor (the batch dim already replaced by ``-1``
    or ``batch_size``), a list of such structures for a tuple/list output, a dict for a mapping
    output, and ``None`` for anything that is not a tensor. ``output_bytes`` is the size of this
    call's tensor outputs for one sample.
    """

    name: str
    output_shape: Any
    params: int
    trainable_params: int
    output_bytes: int

    @property
    def shape_text(self) -> str:
        """The output shape as shown in the table, e.g. ``"[-1, 32, 26, 26]"``."""
        return _format_shape(self.output_shape)


def summary(
    net: nn.Module,
    input_shape: Optional[Union[int, Shape]] = None,
    input_dtype: Optional[Union[DtypeLike, Sequence[DtypeLike]]] = None,
    batch_size: int = -1,
    *,
    input_data: Any = None,
    dtypes: Optional[Union[DtypeLike, Sequence[DtypeLike]]] = None,
    device: Optional[Union[str, torch.device]] = None,
    print_fn: Optional[Callable[[str], Any]] = print,
) -> pd.DataFrame:
    """Print a Keras-style table of the layers of ``net`` and return it as a DataFrame.

    ``input_shape`` is the shape of ONE sample without the batch dim, or a list of shapes for
    ``net(x1, x2, ...)``; a dummy batch of 2 is built from it (random floats, zeros for integer
    dtypes). ``input_dtype`` (torchkeras 1.x's name; ``dtypes`` is torchsummary's and means the
    same) is the dummy's dtype: a ``torch.dtype`` or a legacy tensor type such as
    ``torch.FloatTensor``, ``torch.LongTensor`` or ``torch.cuda.FloatTensor``, one for every
    input or a list with one per input; by default the net's float dtype. The dummy goes to the
    net's device (or ``device``), whatever device a ``torch.cuda.*Tensor`` type names.
    ``batch_size`` is what the Output Shape column shows for the batch dim (-1 by default, as in
    torchkeras 1.x and torchsummary). ``input_data`` is a real batch instead: a tensor, a tuple of tensors
    (``net(*data)``) or a dict (``net(**data)``). The net runs once in ``eval()`` mode under
    ``no_grad`` and is left as found (modes, weights, buffers, hooks). ``print_fn`` gets one line
    at a time; ``None`` prints nothing. Totals are in ``df.attrs``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Flatten())
        >>> df = summary(net, input_shape=(1, 28, 28), print_fn=None)
        >>> df["Output Shape"].tolist()
        ['[-1, 32, 26, 26]', '[-1, 32, 26, 26]', '[-1, 21632]']
        >>> df.attrs["total_params"]
        320
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"summary expects an nn.Module, got {type(net).__name__}")
    if input_shape is None and input_data is None:
        raise TypeError(
            "summary needs an input: pass input_shape=(C, H, W), the shape of one sample without "
            "the batch dim, or input_data= a real batch (tensor, tuple or dict of tensors)"
        )
    if input_shape is not None and input_data is not None:
        raise TypeError("pass either input_shape or input_data to summary, not both")
    if input_dtype is not None and dtypes is not None:
        raise TypeError("summary got both input_dtype= and dtypes= (the same thing under two names); pass one")
    dtype_arg = "input_dtype" if input_dtype is not None else "dtypes"
    dtypes = input_dtype if input_dtype is not None else dtypes
    if input_data is not None and dtypes is not None:
        raise TypeError(f"{dtype_arg} only applies to input_shape; give input_data tensors their own dtype")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (batch_size < 1 and batch_size != -1):
        raise TypeError(f"batch_size is the number shown for the batch dim: -1 (default) or a positive int; "
                        f"got {batch_size!r}")

    target = torch.device(device) if device is not None else _net_device(net)
    if input_shape is not None:
        shapes = _parse_shapes(input_shape)
        inputs: Any = tuple(
            _dummy(shape, dtype, target)
            for shape, dtype in zip(shapes, _parse_dtypes(dtypes, len(shapes), net, dtype_arg))
        )
    else:
        inputs = to_device(input_data, target)

    try:
        rows = collect_rows(net, inputs, batch_size=batch_size)
    except Exception as err:
        raise RuntimeError(_forward_error(input_shape, inputs, err)) from err

    totals = _totals(net, rows, _bytes_per_sample(inputs, _batch_len(inputs)))
    if print_fn is not None:
        for line in render(rows, totals).splitlines():
            print_fn(line)
    df = pd.DataFrame(
        [(row.name, row.shape_text, row.params) for row in rows], columns=_COLUMNS
    ).astype({"Param #": "int64"})
    df.attrs.update(totals)
    return df


def collect_rows(net: nn.Module, inputs: Any, *, batch_size: int = -1) -> list[LayerRow]:
    """Run ``net`` once on ``inputs`` and return one :class:`LayerRow` per layer call.

    ``inputs`` is a real batch: a tensor, a tuple/list of tensors (``net(*inputs)``) or a dict
    (``net(**inputs)``), already on the net's device. Rows are in the order the layers were
    called; the root and pure containers get no row (a root without children gets one).
    A ``DataParallel``/DDP wrapper is looked through: the rows are the held net's.
    A layer's ``params`` are its own plus those of descendants that were never called, so no
    parameter is counted in two rows unless a layer is called twice. Errors from the forward
    propagate unchanged, after the net has been restored.

    Example:
        >>> rows = collect_rows(nn.Sequential(nn.Linear(4, 2), nn.ReLU()), torch.zeros(3, 4))
        >>> [(r.name, r.shape_text, r.params) for r in rows]
        [('Linear-1', '[-1, 2]', 10), ('ReLU-2', '[-1, 2]', 0)]
    """
    while isinstance(net, _WRAPPERS):
        net = net.module
    args, kwargs = _split_inputs(inputs)
    n = _batch_len(inputs)
    layers = [m for m in net.modules() if m is not net and not isinstance(m, _CONTAINERS)]
    if not layers and not isinstance(net, _CONTAINERS):
        layers = [net]  # a bare nn.Linear would otherwise give an empty table

    calls: list[list[Any]] = []  # [module, (shape, bytes) or None], in call order
    open_calls: dict[int, list[int]] = {}  # a stack per module, for re-entrant calls

    def before(module: nn.Module, _args: Any) -> None:
        # Numbering at call time (not at return) puts a block before the layers it calls.
        open_calls.setdefault(id(module), []).append(len(calls))
        calls.append([module, None])

    def after(module: nn.Module, _args: Any, output: Any) -> None:
        # Keep only shapes and sizes, so no activation outlives its layer.
        index = open_calls[id(module)].pop()
        calls[index][1] = (_shape_of(output, n, batch_size), _bytes_per_sample(output, n))

    modes = [(m, m.training) for m in net.modules()]
    handles = []
    try:
        for module in layers:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        net.eval()  # eval keeps BatchNorm running stats and dropout masks untouched
        with torch.no_grad():
            net(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        # Set flags one by one: train(mode) recurses and would flatten mixed modes.
        for module, training in modes:
            module.training = training

    called = {id(module) for module, _ in calls}
    rows = []
    for index, (module, result) in enumerate(calls, start=1):
        shape, nbytes = result if result is not None else (None, 0)
        params = _own_params(module, called)
        rows.append(
            LayerRow(
                name=f"{type(module).__name__}-{index}",
                output_shape=shape,
                params=sum(p.numel() for p in params),
                trainable_params=sum(p.numel() for p in params if p.requires_grad),
                output_bytes=nbytes,
            )
        )
    return rows


def render(rows: Sequence[LayerRow], totals: Mapping[str, float]) -> str:
    """Render rows and totals as the torchkeras/Keras text table (no trailing newline).

    ``totals`` has the keys of ``summary(...).attrs``: ``total_params``, ``trainable_params``,
    ``non_trainable_params``, ``input_size_mb``, ``forward_backward_size_mb``,
    ``params_size_mb``, ``total_size_mb``. Columns widen to fit long names and shapes.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> totals = summary(net, (4,), print_fn=None).attrs
        >>> text = render(collect_rows(net, torch.zeros(2, 4)), totals)
        >>> text.splitlines()[3].split()
        ['Linear-1', '[-1,', '2]', '10']
    """
    cells = [(row.name, row.shape_text, f"{row.params:,}") for row in rows]
    widths = [
        max([minimum, len(title)] + [len(cell[i]) for cell in cells])
        for i, (title, minimum) in enumerate(zip(_COLUMNS, _MIN_WIDTHS))
    ]
    width = sum(widths) + 4

    def line(cell: Sequence[str]) -> str:
        return f"{cell[0]:<{widths[0]}}  {cell[1]:>{widths[1]}}  {cell[2]:>{widths[2]}}"

    return "\n".join(
        [
            "-" * width,
            line(_COLUMNS),
            "=" * width,
            *(line(cell) for cell in cells),
            "=" * width,
            f"Total params: {totals['total_params']:,}",
            f"Trainable params: {totals['trainable_params']:,}",
            f"Non-trainable params: {totals['non_trainable_params']:,}",
            "-" * width,
            f"Input size (MB): {totals['input_size_mb']:.3f}",
            f"Forward/backward pass size (MB): {totals['forward_backward_size_mb']:.3f}",
            f"Params size (MB): {totals['params_size_mb']:.3f}",
            f"Estimated Total Size (MB): {totals['total_size_mb']:.3f}",
            "-" * width,
        ]
    )


def _totals(net: nn.Module, rows: Sequence[LayerRow], input_bytes: int) -> dict[str, Any]:
    # net.parameters() yields a shared parameter once, so tied weights are not counted twice.
    params = list(net.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    input_mb = input_bytes / _MB
    # Each activation is stored once for the forward and once more as its gradient.
    forward_backward_mb = 2 * sum(row.output_bytes for row in rows) / _MB
    params_mb = sum(p.numel() * p.element_size() for p in params) / _MB
    return {
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "input_size_mb": input_mb,
        "forward_backward_size_mb": forward_backward_mb,
        "params_size_mb": params_mb,
        "total_size_mb": input_mb + forward_backward_mb + params_mb,
    }


def _own_params(module: nn.Module, called: set[int]) -> list[nn.Parameter]:
    # A child that never ran through __call__ (MultiheadAttention's out_proj is used through
    # its .weight) gets no row, so its parameters belong to the nearest recorded ancestor.
    params = {id(p): p for p in module.parameters(recurse=False)}
    pending = list(module.children())
    while pending:
        child = pending.pop()
        if id(child) in called:
            continue
        params.update((id(p), p) for p in child.parameters(recurse=False))
        pending.extend(child.children())
    return list(params.values())


def _batch_len(inputs: Any) -> Optional[int]:
    # The first dim of the first input tensor is the batch; outputs whose first dim matches it
    # are shown with -1 there.
    for tensor in tensors(inputs):
        if tensor.dim() > 0:
            return int(tensor.shape[0])
    return None


def _shape_of(output: Any, n: Optional[int], batch_size: int) -> Any:
    if isinstance(output, torch.Tensor):
        shape = list(output.shape)
        if shape and n is not None and shape[0] == n:
            shape[0] = batch_size
        return shape
    if isinstance(output, Mapping):
        return {key: _shape_of(value, n, batch_size) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [_shape_of(value, n, batch_size) for value in output]
    return None


def _format_shape(shape: Any) -> str:
    if shape is None:
        return "-"
    if isinstance(shape, Mapping):
        return "{" + ", ".join(f"{k!r}: {_format_shape(v)}" for k, v in shape.items()) + "}"
    if all(isinstance(d, int) for d in shape):  # one tensor's shape
        return "[" + ", ".join(str(d) for d in shape) + "]"
    return "[" + ", ".join(_format_shape(s) for s in shape) + "]"


def _bytes_per_sample(obj: Any, n: Optional[int]) -> int:
    total = 0
    for tensor in tensors(obj):
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.dim() > 0 and n and tensor.shape[0] == n:
            nbytes //= n
        total += nbytes
    return total


def _split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    raise TypeError(
        "inputs must be a tensor, a tuple/list of tensors (net(*inputs)) or a dict "
        f"(net(**inputs)), got {type(inputs).__name__}"
    )


def _parse_shapes(input_shape: Any) -> list[tuple[int, ...]]:
    def is_shape(s: Any) -> bool:
        return isinstance(s, (tuple, list, torch.Size)) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s
        )

    if isinstance(input_shape, int) and not isinstance(input_shape, bool) and input_shape >= 0:
        return [(input_shape,)]
    if is_shape(input_shape):
        return [tuple(input_shape)]
    if isinstance(input_shape, (tuple, list)) and input_shape and all(map(is_shape, input_shape)):
        return [tuple(s) for s in input_shape]
    raise TypeError(
        "input_shape must be one sample's shape without the batch dim, e.g. (1, 28, 28), or a "
        f"list of such shapes for a net with several inputs; got {input_shape!r}"
    )


def _parse_dtypes(dtypes: Any, count: int, net: nn.Module, arg: str = "dtypes") -> list[torch.dtype]:
    if dtypes is None:
        # Match the net's float precision, so a .double() or .half() net runs as is.
        floating = (p.dtype for p in net.parameters() if p.is_floating_point())
        return [next(floating, torch.get_default_dtype())] * count
    single = _as_dtype(dtypes)
    if single is not None:
        return [single] * count
    if not isinstance(dtypes, (list, tuple)):
        raise ValueError(_dtype_error(arg, dtypes, count))
    parsed = [_as_dtype(d) for d in dtypes]
    if len(parsed) != count or any(d is None for d in parsed):
        raise ValueError(_dtype_error(arg, dtypes, count))
    return parsed  # type: ignore[return-value]


def _as_dtype(spec: Any) -> Optional[torch.dtype]:
    """A torch.dtype for a dtype, a legacy tensor type (torch.LongTensor) or the name of one."""
    if isinstance(spec, torch.dtype):
        return spec
    if isinstance(spec, str):
        name = spec[len("torch."):] if spec.startswith("torch.") else spec
        if name.startswith("cuda."):
            name = name[len("cuda."):]
        found = getattr(torch, name, None)
        if isinstance(found, torch.dtype):
            return found
        spec = found
    # Legacy tensor types (torch.FloatTensor, torch.cuda.LongTensor...) are instances of
    # torch's metaclass `tensortype` and carry their dtype.
    if isinstance(spec, type) and type(spec).__name__ == "tensortype":
        return spec.dtype
    return None


def _dtype_error(arg: str, given: Any, count: int) -> str:
    return (
        f"{arg} must be a torch.dtype (torch.long) or a tensor type (torch.LongTensor), one for "
        f"every input or a list of {count} (one per input); got {given!r}"
    )


def _dummy(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if dtype.is_floating_point or dtype.is_complex:
        return torch.rand(_DUMMY_BATCH, *shape, dtype=dtype, device=device)
    # Zeros are a valid index for any embedding and a valid class id for any target.
    return torch.zeros(_DUMMY_BATCH, *shape, dtype=dtype, device=device)


def _net_device(net: nn.Module) -> torch.device:
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        return tensor.device
    return torch.device("cpu")


def _forward_error(input_shape: Any, inputs: Any, err: Exception) -> str:
    shapes = [tuple(t.shape) for t in tensors(inputs)]
    if input_shape is not None:
        return (
            f"summary could not run the net on a dummy batch of shape {', '.join(map(str, shapes))} "
            f"built from input_shape={input_shape!r} ({type(err).__name__}: {err}). input_shape "
            "should be the shape of ONE sample without the batch dim, e.g. (1, 28, 28) for "
            "28x28 grey images; pass a list of shapes for several inputs, input_dtype=torch.long "
            "for integer inputs (token ids), or input_data= a real batch."
        )
    return (
        f"summary could not run the net on input_data with tensor shapes "
        f"{', '.join(map(str, shapes))} ({type(err).__name__}: {err}). input_data should be a "
        "real batch with the batch dim first: a tensor, a tuple of tensors for net(*data) or a "
        "dict for net(**data)."
    )
