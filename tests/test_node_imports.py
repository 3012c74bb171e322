"""No import cycle among the node's modules (firmware/ and drivers/).

On a node both folders are one flat namespace (frozen into the image, or .mpy files side by
side), so the graph is built over both: an edge for every `import x` and `from x import y`
anywhere in a module (inside functions too: a lazy import is still a dependency), for
`__import__("x")`, and, where a module calls `__import__` with a computed name (the sensors'
driver tables), for every string literal in it that names one of the modules. A cycle makes
the order of first imports matter and keeps two modules from being loaded or dropped apart
(docs/node-runtime.md, "Heap").
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_cycles import components

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("firmware", "drivers")


def modules() -> dict[str, Path]:
    return {p.stem: p for folder in FOLDERS for p in sorted((ROOT / folder).glob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The node modules `path` imports."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    computed = False
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
            out.add(n.module.split(".")[0])
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) \
                and n.func.id == "__import__" and n.args:
            arg = n.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
            else:
                computed = True
    if computed:
        out.update(n.value for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in known)
    out.discard(path.stem)
    return out & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[str]:
    """Every import cycle, "a -> b -> a", with the component's other modules: "(and c, d)"."""
    return [" -> ".join(cycle) + (" (and %s)" % ", ".join(rest) if rest else "")
            for cycle, rest in components(g)]


def test_the_graph_sees_the_imports_the_firmware_makes():
    g = graph()
    assert {"mqtt", "fqueue", "sensors"} <= g["node"], g["node"]
    assert "session" in g["node"]  # imported inside a method: still an edge
    assert {"pulsenode", "bme280", "cfg_serial"} <= g["sensors"]  # by name, from its tables


def test_the_cycle_finder_names_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == ["a -> b -> c -> a"]
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}) == ["a -> b -> a (and c)"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_firmware_and_drivers():
    found = cycles(graph())
    assert not found, "import cycles among firmware/ and drivers/ modules: " + "; ".join(found)
