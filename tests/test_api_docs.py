"""docs/api.md's argument tables stay equal to the signatures.

Each public call has a table under "## Arguments of every call": one row per argument, in
signature order, with its default and a description. The signatures are read live
(``inspect.signature``), so an argument added, renamed or removed in the code fails here until
its row is written; so does a default changed in one place only, or a new public callback
without a table.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import torchfit
from torchfit import callbacks

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.md").read_text()

# section title -> (the call, where its **kwargs go, or None)
CALLS = {
    "model.compile": (torchfit.Model.compile, None),
    "model.fit": (torchfit.Model.fit, None),
    "model.evaluate": (torchfit.Model.evaluate, None),
    "model.predict": (torchfit.Model.predict, None),
    "model.summary": (torchfit.Model.summary, torchfit.summary),
    "model.save_checkpoint": (torchfit.Model.save_checkpoint, None),
    "model.load_checkpoint": (torchfit.Model.load_checkpoint, None),
    "model.lr_find": (torchfit.Model.lr_find, torchfit.lr_find),
}
# fit's machinery, not constructed by users
INTERNAL = {"Callback", "CallbackList", "History"}
CALLBACKS = sorted(name for name, obj in ((n, getattr(callbacks, n)) for n in callbacks.__all__)
                   if isinstance(obj, type) and issubclass(obj, callbacks.Callback) and name not in INTERNAL)
CALLS.update({name: (getattr(callbacks, name), None) for name in CALLBACKS})


def default_text(p: inspect.Parameter) -> str:
    if p.default is inspect.Parameter.empty:
        return "required"
    if callable(p.default) and hasattr(p.default, "__name__"):
        return f"`{p.default.__name__}`"
    if isinstance(p.default, str):
        return f'`"{p.default}"`'
    return f"`{p.default!r}`"


def expected_rows(fn, forwards_to):
    """(argument as the table shows it, default text) for each parameter, in signature order."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    rows = []
    for p in params:
        if p.kind is p.VAR_KEYWORD and forwards_to is not None:
            taken = {q.name for q in params}
            for q in list(inspect.signature(forwards_to).parameters.values())[1:]:  # [0]: the net / the model
                if q.name not in taken and q.kind is not q.VAR_KEYWORD:
                    rows.append((f"`{q.name}`" + (" (keyword)" if q.kind is q.KEYWORD_ONLY else ""), default_text(q)))
        elif p.kind is p.VAR_KEYWORD:
            rows.append((f"`**{p.name}`", ""))
        else:
            rows.append((f"`{p.name}`" + (" (keyword)" if p.kind is p.KEYWORD_ONLY else ""), default_text(p)))
    return rows


def sections() -> dict:
    part = API.split("\n## Arguments of every call\n", 1)
    assert len(part) == 2, "docs/api.md has no '## Arguments of every call' section"
    found = {}
    for block in re.split(r"\n### ", "\n" + part[1].split("\n## ", 1)[0])[1:]:
        title, _, body = block.partition("\n")
        found[title.strip().strip("`")] = body
    return found


def documented_rows(body: str):
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and cells[0] not in ("argument", "---"):
            assert len(cells) == 3 and cells[2], f"a row needs an argument, a default and a description: {line!r}"
            rows.append((cells[0], cells[1]))
    return rows


def test_every_public_call_has_a_table():
    assert set(sections()) == set(CALLS), {"missing": sorted(set(CALLS) - set(sections())),
                                           "no such call": sorted(set(sections()) - set(CALLS))}
    assert {"EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "CSVLogger"} <= set(CALLBACKS)


@pytest.mark.parametrize("title", sorted(CALLS))
def test_the_table_lists_every_argument_with_its_default(title):
    fn, forwards_to = CALLS[title]
    body = sections()[title]
    expected = expected_rows(fn, forwards_to)
    if not expected:
        assert "No arguments." in body, title
        return
    documented = documented_rows(body)
    names = [name for name, _ in documented]
    missing = [name for name, _ in expected if name not in names]
    assert not missing, f"docs/api.md, {title}: no row for {missing} (add them to the table)"
    assert documented == expected, f"docs/api.md, {title}: rows {documented} but the signature gives {expected}"


def test_the_check_fails_for_a_parameter_the_docs_lack():
    def fit(self, epochs=1, *, brand_new=None):
        pass

    documented = documented_rows("| `epochs` | `1` | epochs to run |")
    assert documented != expected_rows(fit, None)
    assert ("`brand_new` (keyword)", "`None`") in expected_rows(fit, None)
