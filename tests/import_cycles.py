"""The cycle finder the import-graph tests share (tests/test_gw_imports.py for gateway/,
tests/test_node_imports.py for firmware/ and drivers/): each builds its graph its own way,
module -> the modules it imports, and asks this for the cycles in it."""

from __future__ import annotations


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan): a
    shortest path `[a, b, ..., a]` through the component's first module."""
    return [cycle for cycle, _rest in components(graph)]


def components(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected component of more than one module: a shortest cycle through
    its first module, and the component's modules not on that cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[list[str], list[str]]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                members = set(component)
                cycle = _path_in(graph, members, min(members))
                found.append((cycle, sorted(members - set(cycle))))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _path_in(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest cycle through `start` inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")
