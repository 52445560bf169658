"""The shape the library promises itself (docs/architecture.md), checked on its source:
no import circle (imports inside functions and through a package's ``__init__`` included), no
module writing another object's private attributes, and the FSDP strategy known only to its own
file and the strategy registry."""
from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "torchfit")


def modules() -> Iterator[Tuple[str, str, ast.Module]]:
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                mod = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                with open(path) as f:
                    yield mod, path, ast.parse(f.read())


def imported(mod: str, is_package: bool, tree: ast.Module, known: Set[str]) -> Set[str]:
    """torchfit modules ``mod`` imports anywhere (a package's ``__init__`` counts for its submodules)."""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
            target = ".".join(parts)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != mod}


def test_no_import_circle():
    trees = {mod: (path, tree) for mod, path, tree in modules()}
    known = set(trees)
    graph: Dict[str, Set[str]] = {}
    for mod, (path, tree) in trees.items():
        deps = imported(mod, path.endswith("__init__.py"), tree, known)
        # importing a.b runs a's __init__ first
        graph[mod] = deps | {".".join(d.split(".")[:i]) for d in deps for i in range(2, d.count(".") + 1)
                             if ".".join(d.split(".")[:i]) in known and not mod.startswith(".".join(d.split(".")[:i]))}
    circles: List[List[str]] = []
    state: Dict[str, int] = {}

    def visit(m: str, stack: List[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


def test_no_module_writes_another_objects_private_attributes():
    found = []
    for mod, path, tree in modules():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                for leaf in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if (isinstance(leaf, ast.Attribute) and leaf.attr.startswith("_")
                            and not leaf.attr.startswith("__")
                            and not (isinstance(leaf.value, ast.Name) and leaf.value.id in ("self", "cls"))):
                        found.append(f"{mod}:{node.lineno} {ast.unparse(leaf)}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "object.__setattr__":
                name = node.args[1].value if isinstance(node.args[1], ast.Constant) else "_?"
                if name.startswith("_") and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "self"):
                    found.append(f"{mod}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def test_fsdp_is_known_only_to_its_file_and_the_registry():
    """A strategy plugs in as one file plus a registry line: nothing else names FSDP's pieces."""
    names = {"fsdp", "FSDP", "FullySharded", "is_sharded", "fully_shard", "FSDPModule"}
    allowed = {"torchfit.distributed.fsdp", "torchfit.distributed"}
    found = []
    for mod, path, tree in modules():
        if mod in allowed:
            continue
        for node in ast.walk(tree):
            name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                    else None)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                name = next((a.name for a in node.names if a.name.split(".")[-1] in names), None) or (
                    getattr(node, "module", None) if (getattr(node, "module", None) or "").split(".")[-1] in names
                    else None)
            if name in names or (name and name.split(".")[-1] in names):
                found.append(f"{mod}:{node.lineno} {name}")
    assert not found, found
