"""No import circles between mimfast's modules, counting the imports inside functions too.

The package itself (``import mimfast as mf``) is the public facade and is left out: a module
may use the API through it."""

import ast
from pathlib import Path

import mimfast

ROOT = Path(mimfast.__file__).parent


def _module(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, name):
    """The mimfast modules that the file ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # submodules by name
    return found


def _graph():
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    return {name: sorted(m for m in _imports(path, name) if m in files and m != "mimfast"
                         and m != name and not name.startswith(m + "."))
            for name, path in files.items()}


def _circles(graph):
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return circles


def test_the_finder_finds_a_circle():
    assert _circles({"a": ["b"], "b": ["c"], "c": ["a"]}) == [["a", "b", "c", "a"]]
    assert _circles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_no_import_circles():
    graph = _graph()
    assert "mimfast.cli_sweep" in graph["mimfast.cli"]  # the walk sees lazy imports
    assert _circles(graph) == []
