"""The gateway package's structure: no import cycles, SQL only in the outbox, no reaching into
another module's private state.

The import graph is read from the source with `ast`, not from `sys.modules`: every `import` and
`from ... import` anywhere in a module counts, at module level, inside a function and under
`if TYPE_CHECKING:` alike. A function-level import only delays a cycle to the first call,
and a type-only one is still two modules that each need the other's shape; both are what
this test exists to keep out. `from gateway.x import y` is an edge to `gateway.x.y` when
that is a module, else to `gateway.x`. Imports from outside the package are left out.

A dynamic import (`importlib.import_module`, `__import__`) would be a hidden edge, so the
package uses none (checked here too).

The outbox's database is written and read only by gateway/outbox.py and its table classes in
gateway/store/ (the history sink has a database of its own, gateway/sinks/history.py): any
other module calling `execute` or `query`, or touching a `.db`, fails here. And no module
uses `obj._name` of an object that is not its own (`self`, `cls`, `super()`), but for the
few third-party ones listed in `FOREIGN_PRIVATE`, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_cycles import cycles

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gateway"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _absolute(name: str, level: int, module: str, is_package: bool) -> str:
    """The absolute name of a relative import `level` dots up from `module`."""
    if not level:
        return name
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, module, is_package)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            # `import gateway.a.b` needs gateway.a.b; keep the longest known name
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert {"gateway.daemon", "gateway.api", "gateway.outbox", "gateway.sinks.file"} <= set(graph)
    assert "gateway.outbox" in graph["gateway.ingest"]
    assert "gateway.sinks.base" in graph["gateway.sinks.file"]


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_gateway() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in gateway/ (module-level, function-level and " \
        "TYPE_CHECKING imports all count):\n" + "\n".join(" -> ".join(c) for c in found)


def _nodes() -> list[tuple[str, Path, ast.AST]]:
    return [(name, path, node) for name, path in modules().items()
            for node in ast.walk(ast.parse(path.read_text(), str(path)))]


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def test_no_dynamic_imports() -> None:
    for _, path, node in _nodes():
        if isinstance(node, ast.Call):
            assert _called(node) not in ("import_module", "__import__"), \
                f"{path.relative_to(ROOT)}:{node.lineno}: a dynamic import hides an edge of " \
                "the import graph; import the module by name"


# modules that run SQL: the outbox and its tables, and the history sink on its own file
SQL_OWNERS = ("gateway.outbox", "gateway.store", "gateway.sinks.history")
SQL_CALLS = ("execute", "executemany", "executescript", "query")


def test_only_the_outbox_runs_sql() -> None:
    found = []
    for name, path, node in _nodes():
        if name == "gateway.store" or name.startswith(SQL_OWNERS):
            continue
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and _called(node) in SQL_CALLS:
            found.append(f"{where}: {ast.unparse(node.func)}(...)")
        elif isinstance(node, ast.Attribute) and node.attr == "db":
            found.append(f"{where}: {ast.unparse(node)}")
    assert not found, "SQL outside gateway/outbox.py and gateway/store/ (give the outbox a " \
        "method):\n" + "\n".join(found)


# obj._name of a third-party object, each with its reason (module, expression)
FOREIGN_PRIVATE = {
    # paho's MQTTMessage.topic raises on bad UTF-8 and paho has no public name for the raw
    # bytes; only a broker that lets bad UTF-8 through reaches it (tests/test_gw_mqtt.py)
    ("gateway.daemon", "message._topic"),
    # nats-py (pinned) has no public call to leave a server that lost its cluster; it leaves
    # a stale connection for the next server through this (gateway/jetstream.py
    # _quorum_watch, tests/test_gw_jetstream.py: the partition test)
    ("gateway.jetstream", "nc._process_op_err"),
}
# underscore names that are public API: a NamedTuple's methods
PUBLIC_UNDERSCORE = ("_replace", "_asdict", "_fields", "_make")


def _own(value: ast.expr) -> bool:
    """`self`, `cls` or `super()`: an object's own private names."""
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super"


def test_no_private_state_of_another_module() -> None:
    found = []
    for name, path, node in _nodes():
        if isinstance(node, ast.Attribute):
            attr, value = node.attr, node.value
        elif isinstance(node, ast.Call) and _called(node) in ("getattr", "setattr", "hasattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            attr, value = node.args[1].value, node.args[0]
        else:
            continue
        if not attr.startswith("_") or attr.startswith("__") or attr in PUBLIC_UNDERSCORE \
                or _own(value) or (name, ast.unparse(node)) in FOREIGN_PRIVATE:
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "private state of another object (add a public method or property, " \
        "or list a third-party one in FOREIGN_PRIVATE with its reason):\n" + "\n".join(found)


# ---- the reading rules, each in one place (gateway/wire.py) --------------------------------

def _source_without_docstrings(path: Path) -> str:
    """The code of `path` as `ast.unparse` writes it, without docstrings and comments."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.unparse(tree)


# what writes a rule of a reading again, and the one module that may
READING_RULES = {
    "the relative-time rule (-1 - age)": "-1 -",
    "the decimal scale (value * 10 ** scale)": "10 **",
    "the SenML name (node:channel:instance)": "senml_name(",
    "a reading decoder": "def decode_reading",
    "a SenML resolver": "class Resolver",
    "the key-0 delta (elapsed)": "elapsed +=",
}


def test_each_reading_rule_is_written_in_wire_only() -> None:
    """Decoding, the base time, the decimal scale and SenML naming live in gateway/wire.py;
    any other module (host_tools too) calls it, so a fix there is a fix everywhere."""
    found = []
    paths = [*sorted((ROOT / "gateway").rglob("*.py")), *sorted((ROOT / "host_tools").rglob("*.py"))]
    for path in paths:
        name = module_name(path) if path.is_relative_to(ROOT / "gateway") else str(path)
        if name == "gateway.wire":
            continue
        code = _source_without_docstrings(path)
        for rule, text in READING_RULES.items():
            if text in code:
                found.append(f"{name}: {rule} ({text!r})")
    assert not found, "reading rules outside gateway/wire.py:\n" + "\n".join(found)
    wire = _source_without_docstrings(ROOT / "gateway" / "wire.py")
    assert all(text in wire for text in READING_RULES.values())  # the checks look for real text
