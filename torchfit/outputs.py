"""What the net returns, read: output objects, a net's own loss, what metrics and predict get.

Owns ``compile``'s reading of the net's output and of mapping batches
(``OutputFormat``): the key of a mapping batch's targets (``target_key``,
``"labels"`` as in Hugging Face), the field of an output object that the loss
and the metrics get (``output_key``, ``"logits"``), and ``OwnLoss``, the loss of
a net that computes its own (``compile(loss=None)``: the output's ``.loss`` or
``["loss"]``). An *output object* is a dataclass instance (Hugging Face's
``ModelOutput`` is one) or, for a net with its own loss, a mapping. Tensors,
tuples and dicts of a net trained with a loss of torchfit's pass through as
they always did (several outputs: ``heads``). Nothing here imports a
third-party library: objects are recognised by what they are, not by
their package.

>>> fmt = OutputFormat(own_loss=True)
>>> out = {"loss": torch.tensor(0.5), "logits": torch.ones(2, 3)}
>>> fmt.loss(out), fmt.preds(out).shape
(tensor(0.5000), torch.Size([2, 3]))
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .errors import MetricError

__all__ = ["OutputFormat", "OwnLoss", "fields", "is_output_object"]


def is_output_object(out: Any) -> bool:
    """Whether ``out`` is an output object with named fields: a dataclass instance (``ModelOutput``)."""
    return dataclasses.is_dataclass(out) and not isinstance(out, type)


def fields(out: Any) -> Dict[str, Any]:
    """The fields of an output object (or a mapping) that are set: ``{name: value}`` in field order."""
    if isinstance(out, Mapping):  # a ModelOutput is a mapping too; it lists only the fields that are set
        return {k: v for k, v in out.items() if v is not None}
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(out) if getattr(out, f.name) is not None}


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a Tensor of shape {tuple(out.shape)}"
    if is_output_object(out) or isinstance(out, Mapping):
        return f"a {type(out).__name__} with the fields {list(fields(out))}"
    return f"a {type(out).__name__}"


class OwnLoss:
    """The loss of a net that computes its own: ``compile(loss=None)`` (Hugging Face models given
    ``labels=``). Called as a loss ``(output, targets)`` it returns the output's ``loss`` field."""

    target_kind = None  # no reading of labels by torchfit: the net reads them

    def __call__(self, output: Any, targets: Any = None) -> torch.Tensor:
        loss = None
        if is_output_object(output) or isinstance(output, Mapping):
            loss = fields(output).get("loss")
        if not isinstance(loss, torch.Tensor):
            raise TypeError(
                f"compile(loss=None) trains on the loss the net computes itself (its output's .loss or ['loss']), but "
                f"the net returned {_describe(output)}. Give the net its targets (a Hugging Face model computes the "
                "loss when the batch has 'labels'; name another key with compile(target_key=...)), or pass a loss: "
                "compile(loss=nn.CrossEntropyLoss(), ...)")
        return loss

    def __repr__(self) -> str:
        return "OwnLoss()"


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """How compile reads mapping batches and the net's outputs (see the module docstring).

    ``target_key``: the key of a mapping batch's targets (a tuple of keys: a dict of targets);
    ``output_key``: the field of an output
    object the loss, the metrics and ``predict`` get (``None``: ``predict`` returns every field);
    ``own_loss``: the net computes its loss (``compile(loss=None)``), so it gets the targets as an
    input too and its output is read for the loss; ``per_field``: one loss per output
    (``compile(loss={"logits": ..., "aux": ...})``), so the losses, the metrics and ``predict`` get every
    field but ``loss`` as a dict.
    """

    target_key: Union[str, Tuple[str, ...]] = "labels"
    output_key: Optional[str] = "logits"
    own_loss: bool = False
    per_field: bool = False  # one loss per output (compile(loss={...})): the loss gets every field

    def __post_init__(self) -> None:
        keys = [self.target_key] if isinstance(self.target_key, str) else self.target_key
        if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise TypeError(f"compile(target_key=...) must be the key of the targets in a mapping batch, e.g. "
                            f"'labels', or a tuple of keys; got {self.target_key!r}")
        if not isinstance(self.target_key, str):
            object.__setattr__(self, "target_key", tuple(self.target_key))  # frozen: hashable, one type
        if self.output_key is not None and (not isinstance(self.output_key, str) or not self.output_key):
            raise TypeError(f"compile(output_key=...) must name a field of the net's output, e.g. 'logits', or be "
                            f"None; got {self.output_key!r}")

    def _is_object(self, out: Any) -> bool:
        return is_output_object(out) or (self.own_loss and isinstance(out, Mapping))

    def loss(self, out: Any) -> torch.Tensor:
        """The loss a net with its own loss returned, checked to be a scalar."""
        loss = OwnLoss()(out)
        if loss.dim() != 0:
            raise ValueError(f"the net's own loss must be a scalar (0-d) tensor; it is of shape {tuple(loss.shape)}. "
                             "Return the batch mean (reduction='mean')")
        return loss

    def preds(self, out: Any, needed: bool = True) -> Any:
        """What the loss (of torchfit's) and the metrics get from ``out``: ``out[output_key]`` of an
        output object, else ``out`` itself. ``needed``: a field that is missing is an error (metrics
        to feed); else ``None`` (no metrics: the loss alone)."""
        if not self._is_object(out):
            return out
        got = fields(out)
        if self.per_field:  # several losses, matched to the output's fields by name
            return {k: v for k, v in got.items() if k != "loss"}
        if self.output_key is not None and self.output_key in got:
            return got[self.output_key]
        if not needed:
            return None
        raise MetricError(
            f"the metrics read the net's output field {self.output_key!r}, but the net returned {_describe(out)}. "
            f"Name the field the metrics (and predict) should get: compile(output_key='<one of {list(got)}>'), "
            "or compile without metrics")

    def predicted(self, out: Any) -> Any:
        """What ``predict`` keeps of one batch's output: ``out[output_key]`` of an output object, else
        every field but ``loss`` (a batch mean, not one row per sample) as a dict; anything else as is."""
        if not self._is_object(out):
            return out
        got = fields(out)
        if self.output_key is not None and self.output_key in got and not self.per_field:
            return got[self.output_key]
        kept: List[str] = [k for k in got if k != "loss"]
        return {k: got[k] for k in kept}
