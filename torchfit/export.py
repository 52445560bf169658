"""Export a net with a check: ``torch.export`` (``.pt2``) or ONNX, run against the eager net.

Owns writing a trained net to a file another program can run, and proving the file
computes what the net computes: the written program is loaded back and run on the
example batch and on a few more batches (other batch sizes, since the batch size is
dynamic by default), and the largest difference from the eager net is reported. Above
the tolerance nothing is left at ``path`` and ``ExportError`` says by how much and on
which batch; a net that ``torch.export`` cannot capture (a branch on a tensor's value)
is refused with the line that branches. The weights can go beside it as
``safetensors`` for sharing. It leaves training, devices and checkpoints to others: it
exports the net as it is, in eval mode, on the device it is on.

    >>> # report = torchfit.export.export(model, "model.pt2", next(iter(dl_val)))
    >>> # print(report)   # exported to model.pt2 (pt2): largest difference from the eager net 2.4e-07 ...
    >>> # model.export("model.onnx", batch)   # ONNX, checked with onnxruntime
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .batch import predict_inputs
from .errors import install_hint

__all__ = ["export", "ExportError", "ExportReport", "FORMATS"]

FORMATS = {".pt2": "pt2", ".onnx": "onnx"}
PathLike = Union[str, "os.PathLike[str]"]


class ExportError(RuntimeError):
    """The net could not be exported, or the exported program does not compute what the net does.

    ``details``: what the exporter printed while it failed (torch's partial graph), for debugging."""

    details: str = ""


@dataclasses.dataclass
class ExportReport:
    """What ``export`` wrote and how closely the written program matches the eager net.

    ``checks``: (batch size, largest absolute difference) per batch run, the example first.
    """

    path: str
    format: str
    max_abs_diff: float
    checks: List[Tuple[int, float]]
    atol: float
    rtol: float
    weights_path: Optional[str] = None

    def __str__(self) -> str:
        sizes = ", ".join(str(n) for n, _ in self.checks)
        text = (f"exported to {self.path} ({self.format}): largest difference from the eager net "
                f"{self.max_abs_diff:.2g} over {len(self.checks)} batches (sizes {sizes}), "
                f"within atol={self.atol:g} + rtol={self.rtol:g} x |eager|")
        return text + (f"; weights in {self.weights_path}" if self.weights_path else "")


def export(model_or_net: nn.Module, path: PathLike, example_batch: Any, format: Optional[str] = None, *,
           dynamic_batch: bool = True, atol: float = 1e-5, rtol: float = 1e-5, check_batches: int = 3,
           weights: Union[bool, PathLike] = True, opset_version: Optional[int] = None,
           seed: int = 0) -> ExportReport:
    """Export ``model_or_net`` (a torchfit Model or any nn.Module) to ``path`` and check the file.

    >>> # report = export(model, "net.pt2", (x, y))          # a batch as the loader yields it, or x alone
    >>> # report = export(net, "net.onnx", {"num": a, "cat": b})
    >>> # report.max_abs_diff

    ``example_batch``: ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, w)`` as ``predict``
    reads batches; ``x`` may be a tensor, a tuple of tensors (``net(*x)``) or a dict
    (``net(**x)``). ``format``: ``"pt2"`` (``torch.export``, load with
    ``torch.export.load(path).module()``) or ``"onnx"`` (run with onnxruntime);
    by default from the suffix of ``path``. ``dynamic_batch``: dimension 0 of every
    input is the batch, of any size >= 2 in the exported program (``False`` fixes
    every shape to the example's). The program read back from ``path`` is run on the
    example and ``check_batches`` more: rows drawn from the example (other batch sizes
    when the batch is dynamic) with a little noise on float inputs. A difference above
    ``atol + rtol * |eager|`` anywhere raises ``ExportError`` and leaves nothing at
    ``path``. ``weights=True`` also writes the net's weights as safetensors beside it
    (``path`` with the suffix ``.safetensors``; a path puts them there; load them
    with ``safetensors.torch.load_model(net, file)``). ONNX and safetensors need
    ``pip install torchfit-keras[export]``.
    """
    net = _net_of(model_or_net)
    path = os.fspath(path)
    fmt = _format(path, format)
    weights_path = _weights_path(path, weights)
    for target in (path, weights_path):
        if target is not None:
            parent = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"export: the folder {parent} (for {target}) does not exist; create it first")
    if fmt == "onnx":
        _require("onnx", "onnxruntime", "onnxscript")
    if weights_path is not None:
        _require("safetensors")
    if not isinstance(check_batches, int) or isinstance(check_batches, bool) or check_batches < 0:
        raise ValueError(f"export(check_batches=...) must be an int >= 0; got {check_batches!r}")
    args, kwargs = _call_args(predict_inputs(example_batch))
    leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise TypeError(f"export: the example batch holds no tensor inputs; got {type(example_batch).__name__}")
    n = leaves[0].shape[0] if leaves[0].dim() else 0
    if dynamic_batch:
        odd = [tuple(t.shape) for t in leaves if t.dim() == 0 or t.shape[0] != n]
        if odd:
            raise ValueError(f"export(dynamic_batch=True) reads dimension 0 of every input as the batch, but the "
                             f"inputs' shapes {[tuple(t.shape) for t in leaves]} disagree; pass dynamic_batch=False "
                             "to export fixed shapes")
        if n < 2:
            raise ValueError(f"export(dynamic_batch=True) needs an example batch of at least 2 rows (torch.export "
                             f"fixes a batch of {n} as a constant); pass a bigger batch or dynamic_batch=False")
    device = next((p.device for p in net.parameters()), leaves[0].device)
    args, kwargs = pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, (args, kwargs))
    batches = [(args, kwargs)] + [_resample(args, kwargs, n, i, dynamic_batch, seed) for i in range(check_batches)]

    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad():
            expected = [net(*a, **k) for a, k in batches]
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1] or ".tmp", dir=folder)
        os.close(fd)
        try:
            if fmt == "pt2":
                _export_pt2(net, args, kwargs, dynamic_batch, tmp)
                run = _pt2_runner(tmp)
            else:
                _export_onnx(net, args, kwargs, dynamic_batch, tmp, opset_version, expected[0])
                run = _onnx_runner(tmp)
            checks = []
            for i, ((a, k), want) in enumerate(zip(batches, expected)):
                got = run(a, k)
                size = _batch_size(a, k)
                diff, over = _compare(want, got, atol, rtol)
                checks.append((size, diff))
                if over:
                    which = "the example batch" if i == 0 else f"check batch {i} ({size} rows)"
                    raise ExportError(
                        f"the exported {fmt} program of {type(net).__name__} differs from the eager net by {diff:.3g} "
                        f"on {which}, above atol={atol:g} + rtol={rtol:g} x |eager|; nothing was written to {path}. "
                        "A net whose forward depends on the batch size or on values seen while tracing exports "
                        "wrong: export with dynamic_batch=False, or rewrite the branch with torch.cond / torch.where")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if weights_path is not None:
            from safetensors.torch import save_model

            save_model(net, weights_path, metadata={"format": "pt", "exported_with": fmt})
    finally:
        for module, training in modes:
            module.training = training
    return ExportReport(path=path, format=fmt, max_abs_diff=max(d for _, d in checks), checks=checks, atol=atol,
                        rtol=rtol, weights_path=weights_path)


# ------------------------------------------------------------------ the pieces
def _net_of(obj: Any) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise TypeError(f"export needs a torchfit Model or an nn.Module; got {type(obj).__name__}")
    is_model = all(hasattr(type(obj), name) for name in ("train_step", "compile", "net"))  # a torchfit Model
    return obj.net if is_model else obj


def _format(path: str, format: Optional[str]) -> str:
    if format is None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in FORMATS:
            raise ValueError(f"export: cannot tell the format from {path!r}; end the path in .pt2 or .onnx, "
                             "or pass format='pt2' / 'onnx'")
        return FORMATS[suffix]
    if format not in FORMATS.values():
        raise ValueError(f"export(format={format!r}): the formats are 'pt2' (torch.export) and 'onnx'")
    return format


def _weights_path(path: str, weights: Union[bool, PathLike]) -> Optional[str]:
    if weights is True:
        return os.path.splitext(path)[0] + ".safetensors"
    if weights is False or weights is None:
        return None
    return os.fspath(weights)


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"export needs {', '.join(missing)}: {install_hint('export')}  "
                          f"(or: pip install {' '.join(missing)})")


def _call_args(x: Any) -> Tuple[tuple, Dict[str, Any]]:
    if isinstance(x, dict):
        return (), dict(x)
    if isinstance(x, (tuple, list)):
        return tuple(x), {}
    return (x,), {}


def _batch_size(args: tuple, kwargs: Dict[str, Any]) -> int:
    first = next(t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
    return int(first.shape[0]) if first.dim() else 1


def _resample(args: tuple, kwargs: Dict[str, Any], n: int, i: int, dynamic: bool, seed: int) -> tuple:
    """Rows drawn from the example (the same rows for every input), float inputs with a little noise."""
    g = torch.Generator().manual_seed(seed + i)
    size = n if not dynamic else (n + 3, max(2, n // 2), 2 * n + 1)[i % 3]
    rows = torch.randint(0, n, (size,), generator=g) if n else None

    def draw(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        out = t[rows.to(t.device)] if rows is not None and t.dim() else t.clone()
        if out.is_floating_point():
            scale = float(t.float().std()) if t.numel() > 1 else 1.0
            noise = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
            out = out + 0.1 * (scale if scale > 0 else 1.0) * noise
        return out

    return pytree.tree_map(draw, (args, kwargs))


def _dynamic_shapes(args: tuple, kwargs: Dict[str, Any], dynamic: bool) -> Any:
    if not dynamic:
        return None
    batch = torch.export.Dim("batch", min=2)

    def spec(t: Any) -> Any:
        return {0: batch} if isinstance(t, torch.Tensor) else None

    return pytree.tree_map(spec, (*args, *kwargs.values()))


def _capture_failure(net: nn.Module, exc: BaseException) -> ExportError:
    """The reason torch.export gave up, in a sentence: the line that branches on data, when it is that."""
    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(str(e) for e in chain)
    where = re.search(r'File "([^"]+)", line (\d+), in \w+(?:\n[ \t]+(\S[^\n]*))?', text)
    line = ""
    if where:
        line = f" at {os.path.basename(where.group(1))}:{where.group(2)}"
        line += f" (`{where.group(3).strip()}`)" if where.group(3) else ""
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        return ExportError(
            f"cannot export {type(net).__name__}: its forward has data-dependent control flow{line}: a Python "
            "branch on a tensor's value, which an exported program cannot hold. Rewrite the branch with "
            "torch.cond(pred, true_fn, false_fn, operands) or torch.where, or keep that decision outside the net")
    if "Constraints violated" in text or "specialized" in text:
        return ExportError(
            f"cannot export {type(net).__name__} with a dynamic batch size: its forward fixes the batch size{line} "
            f"(torch.export: {str(chain[-1]).splitlines()[0]}). Export with dynamic_batch=False, or make the "
            "forward work for any batch size")
    first = str(chain[-1]).strip().splitlines()[0] if str(chain[-1]).strip() else type(chain[-1]).__name__
    return ExportError(f"cannot export {type(net).__name__}: torch.export failed{line}: "
                       f"{type(chain[-1]).__name__}: {first}")


@contextlib.contextmanager
def _captured_stderr(net: nn.Module) -> Iterator[None]:
    """Run an exporter with what it prints to stderr held back: passed on when it succeeds, kept on the
    ``ExportError`` as ``details`` (torch prints the partial graph of a failed capture there) when not."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except ExportError:
        raise
    except Exception as exc:
        error = _capture_failure(net, exc)
        error.details = held.getvalue()
        raise error from exc
    else:
        if held.getvalue():
            sys.stderr.write(held.getvalue())


def _export_pt2(net: nn.Module, args: tuple, kwargs: Dict[str, Any], dynamic: bool, path: str) -> None:
    with _captured_stderr(net):
        with warnings.catch_warnings():  # RNNs rebuild their weight list while traced; the program is right
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
            program = torch.export.export(net, args, kwargs, dynamic_shapes=_dynamic_shapes(args, kwargs, dynamic))
    torch.export.save(program, path)


def _pt2_runner(path: str) -> Any:
    module = torch.export.load(path).module()

    def run(args: tuple, kwargs: Dict[str, Any]) -> Any:
        with torch.no_grad():
            return module(*args, **kwargs)

    return run


def _output_names(out: Any) -> List[str]:
    if isinstance(out, torch.Tensor):
        return ["output"]
    if isinstance(out, dict) and all(isinstance(k, str) for k in out) and all(
            isinstance(v, torch.Tensor) for v in out.values()):
        return list(out)
    return [f"output_{i}" for i, _ in enumerate(pytree.tree_leaves(out))]


def _export_onnx(net: nn.Module, args: tuple, kwargs: Dict[str, Any], dynamic: bool, path: str,
                 opset_version: Optional[int], example_out: Any) -> None:
    with _captured_stderr(net), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(net, args, path, kwargs=kwargs, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=_dynamic_shapes(args, kwargs, dynamic), opset_version=opset_version,
                          output_names=_output_names(example_out))


def _onnx_runner(path: str) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(args: tuple, kwargs: Dict[str, Any]) -> List[Any]:
        leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if len(leaves) != len(names):
            raise ExportError(f"the ONNX program takes {len(names)} inputs {names}, the batch has {len(leaves)} "
                              "tensors; export with inputs as tensors, a tuple or a dict of tensors")
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, leaves)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    return run


def _compare(expected: Any, got: Any, atol: float, rtol: float) -> Tuple[float, bool]:
    """Largest absolute difference over every output tensor, and whether it breaks the tolerance."""
    want = [t for t in pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    have = [t for t in pytree.tree_leaves(got) if isinstance(t, torch.Tensor)]
    if len(want) != len(have):
        return float("inf"), True
    worst, over = 0.0, False
    for w, h in zip(want, have):
        h = h.to(w.device)
        if w.shape != h.shape:
            return float("inf"), True
        w64, h64 = w.double(), h.double()
        diff = (w64 - h64).abs()
        diff = torch.where(torch.isnan(w64) & torch.isnan(h64), torch.zeros_like(diff), diff)
        diff = torch.nan_to_num(diff, nan=float("inf"))
        if diff.numel():
            worst = max(worst, float(diff.max()))
            over = over or bool((diff > atol + rtol * w64.abs()).any())
    return worst, over
