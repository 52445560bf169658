"""How the gradients behave: per-layer gradient, weight and update norms, named activations'
statistics, a long-format DataFrame, a plot per layer group and a short diagnosis.

Owns what ``GradientStats`` records and how it reads it. It records only at the
training logging points (``log_step_freq``), as device tensors: nothing is read
back to the host until the epoch ends, where the loop syncs anyway. With
``grad_accum_steps > 1`` a logging point inside an accumulation window is
recorded at the optimizer step that closes it. It leaves the step itself alone:
gradients are read in ``on_backward_end`` (after unscaling, before clipping),
weights there and after the optimizer step.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch
from torch import nn

from .base import Callback

__all__ = ["GradientStats", "LAYER_STATS", "ACTIVATION_STATS"]

LAYER_STATS = ("grad_norm", "weight_norm", "update_norm", "update_ratio")
ACTIVATION_STATS = ("act_mean", "act_std", "act_zeros", "act_dead")


def layer_of(param_name: str) -> str:
    """The module a parameter belongs to; a parameter of the net itself keeps its own name.

    >>> layer_of("encoder.0.weight"), layer_of("scale")
    ('encoder.0', 'scale')
    """
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def _activation_stats(output: Any) -> Optional[torch.Tensor]:
    """mean, std, fraction of zeros and fraction of dead units (zero for every sample of the batch)."""
    out = output
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
        return None
    out = out.detach().float()
    zero = out == 0
    dead = zero.all(dim=0).float().mean() if out.dim() >= 2 else zero.float().mean()
    std = out.std() if out.numel() > 1 else torch.zeros((), device=out.device)
    return torch.stack([out.mean(), std, zero.float().mean(), dead])


class GradientStats(Callback):
    """Per-layer gradient norm, weight norm and update-to-weight ratio at every logging point, plus
    mean / std / fraction of zeros / dead units of the activations you name.

    >>> # stats = GradientStats(activations=["1", "3"])   # names from model.net.named_modules()
    >>> # model.fit(5, dl_train, log_step_freq=20, callbacks=[stats])
    >>> # stats.frame()        # long format: epoch, step, global_step, layer, stat, value
    >>> # stats.plot()         # a row of panels per layer group
    >>> # stats.diagnose()     # ['vanishing gradients in 0, 2: ...', ...] or []

    A layer is a module that owns parameters (``"0"`` for ``net[0].weight`` and
    ``net[0].bias``); its norms are over all its trainable parameters. Per layer:
    ``grad_norm`` (L2, after unscaling and before clipping), ``weight_norm`` (before
    the step), ``update_norm`` (of the step's change to the weights) and
    ``update_ratio`` (update_norm / weight_norm). Per named activation (a module's
    output): ``act_mean``, ``act_std``, ``act_zeros`` (fraction of entries that are
    0) and ``act_dead`` (fraction of units, i.e. positions after the batch
    dimension, that are 0 for every sample of the batch).
    Recording costs a few norms and one copy of the weights at each logging point,
    and nothing on the other steps.
    """

    def __init__(self, activations: Sequence[str] = ()):
        if isinstance(activations, str):
            activations = [activations]
        if not all(isinstance(a, str) for a in activations):
            raise TypeError(f"GradientStats(activations=...) takes module names (str) from "
                            f"model.net.named_modules(); got {activations!r}")
        self.activations = list(activations)
        self._rows: List[Dict[str, Any]] = []
        self._pending: List[Tuple[int, int, int, List[str], torch.Tensor]] = []  # device tensors, read at epoch end
        self._names: List[str] = []
        self._params: List[nn.Parameter] = []
        self._layers: List[str] = []
        self._index: Optional[torch.Tensor] = None
        self._modules: Dict[str, nn.Module] = {}
        self._armed = False  # a logging point's stats are wanted at the next backward end
        self._before: Optional[List[torch.Tensor]] = None
        self._grads: Optional[torch.Tensor] = None
        self._weights: Optional[torch.Tensor] = None
        self._acts: Dict[str, torch.Tensor] = {}
        self._handles: List[Any] = []

    # ------------------------------------------------------------ set-up
    def set_params(self, params: dict) -> None:
        super().set_params(params)
        modules = dict(self.model.net.named_modules())
        unknown = [a for a in self.activations if a not in modules]
        if unknown:
            known = [n for n in modules if n][:20]
            raise ValueError(f"GradientStats(activations={unknown!r}): no such module in the net; "
                             f"names from model.net.named_modules() are e.g. {known}")
        self._modules = {a: modules[a] for a in self.activations}

    def on_train_begin(self, logs: dict) -> None:
        named = [(n, p) for n, p in self.model.net.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._layers = list(dict.fromkeys(layer_of(n) for n in self._names))
        position = {layer: i for i, layer in enumerate(self._layers)}
        device = self._params[0].device if self._params else torch.device("cpu")
        self._index = torch.tensor([position[layer_of(n)] for n in self._names], device=device)
        self._armed = False
        self._before = None

    # ------------------------------------------------------------ recording
    def _logging_point(self, batch: int) -> bool:
        run = self.model.run
        every = run.config.log_every if run is not None else None
        return bool(every) and (batch + 1) % every == 0  # hooks count batches from 0

    def on_train_batch_begin(self, batch: int, logs: dict) -> None:
        if not self._logging_point(batch):
            return
        self._armed = True
        self._acts = {}
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._activation_hook(name)))

    def _activation_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in self._acts:  # the step's first call of the module
                stats = _activation_stats(output)
                if stats is not None:
                    self._acts[name] = stats
        return hook

    def _per_layer(self, norms: List[torch.Tensor]) -> torch.Tensor:
        squares = torch.stack(norms).float() ** 2
        return torch.zeros(len(self._layers), device=squares.device).index_add_(0, self._index, squares).sqrt()

    def on_backward_end(self, batch: int) -> None:
        if not self._armed or not self._params:
            return
        self._armed = False
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        weights = [p.detach() for p in self._params]
        self._grads = self._per_layer(torch._foreach_norm(grads))
        self._weights = self._per_layer(torch._foreach_norm(weights))
        self._before = [w.clone() for w in weights]

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._before is None:
            return
        before, self._before = self._before, None
        updates = self._per_layer(torch._foreach_norm(torch._foreach_sub([p.detach() for p in self._params], before)))
        layer_stats = torch.stack([self._grads, self._weights, updates, updates / self._weights], dim=1)
        acts = [name for name in self.activations if name in self._acts]
        values = layer_stats.flatten()
        if acts:
            values = torch.cat([values, torch.stack([self._acts[n] for n in acts]).to(values.device).flatten()])
        self._acts = {}
        run = self.model.run
        self._pending.append((run.epoch, batch + 1, self.model.global_step, acts, values))  # the 1-based step

    def _read(self) -> None:
        """Everything recorded since the last read, to rows: one host sync for all of it."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = torch.cat([values.to(pending[0][4].device) for *_, values in pending]).tolist()
        at = 0
        for epoch, step, global_step, acts, values in pending:
            chunk = flat[at:at + values.numel()]
            at += values.numel()
            where = {"epoch": epoch, "step": step, "global_step": global_step}
            n = len(LAYER_STATS)
            for i, layer in enumerate(self._layers):
                for j, stat in enumerate(LAYER_STATS):
                    self._rows.append({**where, "layer": layer, "stat": stat, "value": chunk[i * n + j]})
            base = len(self._layers) * n
            for i, name in enumerate(acts):
                for j, stat in enumerate(ACTIVATION_STATS):
                    self._rows.append({**where, "layer": name, "stat": stat,
                                       "value": chunk[base + i * len(ACTIVATION_STATS) + j]})

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._read()

    def on_train_end(self, logs: dict) -> None:
        self._stop()

    def on_exception(self, exception: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._before = None
        self._armed = False
        self._read()  # an epoch cut short keeps what it recorded

    # ------------------------------------------------------------ results
    def frame(self) -> pd.DataFrame:
        """Long format, one row per (logging point, layer, stat): ``epoch``, ``step``, ``global_step``,
        ``layer``, ``stat``, ``value``. ``frame().pivot_table(index="global_step", columns="layer",
        values="value")`` after a filter on ``stat`` gives one column per layer."""
        self._read()
        return pd.DataFrame(self._rows, columns=["epoch", "step", "global_step", "layer", "stat", "value"])

    def plot(self, stats: Sequence[str] = ("grad_norm", "update_ratio"),
             groups: Optional[Callable[[str], str]] = None) -> Any:
        """A row of panels per layer group (default: the first part of the layer's name, the top-level
        layers together), a panel per stat, a line per layer over ``global_step``; norms and ratios on a
        log scale, fractions of zeros on a linear one.
        Returns the matplotlib Figure."""
        from ..plot import _figure_class, _import_matplotlib

        figure_module = _import_matplotlib()
        df = self.frame()
        if df.empty:
            raise ValueError("GradientStats.plot: nothing recorded yet; fit with callbacks=[GradientStats()] "
                             "and a log_step_freq that the epochs reach")
        stats = [stats] if isinstance(stats, str) else list(stats)
        unknown = [s for s in stats if s not in LAYER_STATS + ACTIVATION_STATS]
        if unknown:
            raise ValueError(f"GradientStats.plot(stats={unknown!r}): known stats are "
                             f"{list(LAYER_STATS + ACTIVATION_STATS)}")
        group_of = groups or (lambda layer: layer.split(".")[0] if "." in layer else "top level")
        df = df[df["stat"].isin(stats)]
        df = df.assign(group=df["layer"].map(group_of))
        names = list(dict.fromkeys(df["group"]))
        fig = _figure_class(figure_module)(figsize=(4.2 * len(stats), 2.8 * len(names)), layout="constrained")
        axes = fig.subplots(len(names), len(stats), squeeze=False)
        for row, group in enumerate(names):
            for col, stat in enumerate(stats):
                ax = axes[row][col]
                part = df[(df["group"] == group) & (df["stat"] == stat)]
                for layer, lines in part.groupby("layer", sort=False):
                    values = lines["value"].abs() if stat != "act_mean" else lines["value"]
                    ax.plot(lines["global_step"], values, marker=".", label=layer)
                if stat not in ("act_mean", "act_zeros", "act_dead") and (part["value"].abs() > 0).any():
                    ax.set_yscale("log")
                ax.set_title(f"{group}: {stat}", fontsize="small")
                ax.set_xlabel("global_step")
                if len(part):
                    ax.legend(fontsize="x-small")
        return fig

    def diagnose(self, *, vanishing: float = 1e-3, exploding: float = 10.0, dead: float = 0.5,
                 lr_high: float = 5e-2, lr_low: float = 1e-5, last: int = 3) -> List[str]:
        """Problems seen at the last ``last`` logging points (medians), each named with its layers, the
        figure and what to try; ``[]`` when nothing stands out.

        - vanishing gradients: a layer whose relative gradient (grad_norm / weight_norm) is below
          ``vanishing`` times the largest layer's;
        - exploding gradients: a non-finite gradient norm (with fp16's grad scaler, whose skipped steps
          overflow by design, a non-finite weight norm), or a relative gradient above ``exploding``;
        - dead ReLU: a named activation with more than ``dead`` of its units zero for the whole
          batch; a layer whose gradient is exactly zero (what feeds a dead ReLU);
        - learning rate: the median update_ratio over the layers above ``lr_high`` (too high) or
          below ``lr_low`` (too low), over the layers not named above; about 1e-3 is the usual
          healthy figure.
        """
        df = self.frame()
        if df.empty:
            return []
        steps = sorted(df["global_step"].unique())[-last:]
        recent = df[df["global_step"].isin(steps)]
        finite = recent["value"].map(math.isfinite)
        # with fp16's grad scaler an overflowing step is normal: the scaler skips it, so only weights count
        scaler = getattr(getattr(self.model, "precision", None), "scaler", None)
        checked = ["weight_norm"] if scaler is not None and scaler.is_enabled() else ["grad_norm", "weight_norm"]
        broken = recent[~finite & recent["stat"].isin(checked)]["layer"]
        med = (recent.assign(value=recent["value"].where(finite))
               .groupby(["layer", "stat"], sort=False)["value"].median().unstack("stat"))
        order = [layer for layer in self._layers if layer in med.index] or list(med.index)
        found: List[str] = []
        layers = med.loc[order] if set(LAYER_STATS) <= set(med.columns) else None
        if layers is not None:
            grad, weight = layers["grad_norm"], layers["weight_norm"]
            nonfinite = [name for name in order if name in set(broken)]
            rel = (grad / weight.where(weight > 0)).where(lambda s: s.map(math.isfinite))
            big = [name for name in order if name not in nonfinite and rel.get(name, 0) > exploding]
            if nonfinite or big:
                figures = ", ".join(f"{n} ({_fmt(rel[n])})" for n in big[:6])
                found.append("exploding gradients in " + ", ".join(nonfinite + big) + ": "
                             + ("non-finite gradient or weight norm" if nonfinite else "")
                             + ("; " if nonfinite and big else "")
                             + (f"gradient norm / weight norm {figures} > {exploding:g}" if big else "")
                             + ". Clip gradients (fit(grad_clip_norm=1.0)), lower the learning rate, "
                               "or use a smaller weight init / normalisation layers")
            zero = [name for name in order if grad[name] == 0]
            top = rel.max()
            small = [name for name in order if name not in zero and rel.get(name) is not None
                     and top > 0 and rel[name] < vanishing * top]
            if small:
                figures = ", ".join(f"{n} ({_fmt(rel[n])})" for n in small[:6])
                found.append(f"vanishing gradients in {', '.join(small)}: gradient norm / weight norm {figures}, "
                             f"below {vanishing:g} x the largest layer's ({_fmt(top)}). Use ReLU-like activations, "
                             "residual connections or normalisation layers, or a better weight init")
            if zero:
                found.append(f"no gradient at all in {', '.join(zero)}: the layer's output does not reach the loss "
                             "(a dead ReLU after it, or an unused layer). Lower the learning rate, use LeakyReLU, "
                             "or check the layer's bias init")
            flagged = set(zero) | set(small) | set(big) | set(nonfinite)  # the LR is judged on the other layers
            ratios = layers["update_ratio"][[n for n in order if n not in flagged]]
            ratio = ratios[ratios.map(math.isfinite)].median() if len(ratios) else float("nan")
            if math.isfinite(ratio) and ratio > lr_high:
                found.append(f"learning rate too high: median update / weight ratio {_fmt(ratio)} > {lr_high:g} "
                             "(about 1e-3 is healthy). Lower the learning rate")
            elif math.isfinite(ratio) and 0 < ratio < lr_low:
                found.append(f"learning rate too low: median update / weight ratio {_fmt(ratio)} < {lr_low:g} "
                             "(about 1e-3 is healthy). Raise the learning rate")
        if "act_dead" in med.columns:
            acts = med["act_dead"].dropna()
            gone = [name for name in acts.index if acts[name] > dead]
            if gone:
                figures = ", ".join(f"{n} ({acts[n]:.0%} of units zero for the whole batch)" for n in gone)
                found.append(f"dead ReLU in {figures}. Lower the learning rate, "
                             "use LeakyReLU/GELU, or check the bias init of the layer before it")
        return found


def _fmt(value: float) -> str:
    return f"{value:.2g}"
