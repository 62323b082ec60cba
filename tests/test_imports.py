"""The package's import structure, read from the source with `ast` (module-level and function-local imports):
no circle anywhere in stcl_jax/, no library module imports a command-line module, and the layers run one way."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "stcl_jax"
# Top-level command lines (flags -> one library call); any module with a `__main__` block is one too.
CLI_MODULES = {f"stcl_jax.{m}" for m in ("train", "evaluate", "predict", "pseudo_label", "export", "sweep")}
LIBRARY_FOLDERS = ("models", "losses", "kernels", "data", "training", "evaluation", "configs")
# folder -> folders (and top-level modules) of the package it must never import
FORBIDDEN = {
    "models": ("data", "training", "evaluation", "configs", "convert", "workdir"),
    "losses": ("models", "data", "training", "evaluation", "configs", "convert", "workdir"),
    "kernels": ("models", "data", "training", "evaluation", "configs", "convert", "workdir", "losses"),
    "data": ("models", "losses", "training", "evaluation", "configs", "convert", "workdir"),
    "evaluation": ("training",),
    "configs": ("training", "evaluation", "convert", "workdir"),
}


# Inside stcl_jax/data (the order of its __init__ docstring): layer -> the data layers it may import.
DATA_LAYERS = {
    "label_space": (), "formats": (), "normalize": (), "augment": ("normalize",),
    "datasets": ("label_space",),
    "records": ("formats", "datasets"),
    "sources": ("label_space", "datasets", "records"),
    "pipeline": ("label_space", "augment", "records", "sources"),
    "build": ("label_space", "formats", "datasets", "build"),
    "synthetic": ("datasets", "synthetic", "build"),
    "label_map": ("label_space", "datasets", "records"),
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, modules: dict) -> set[str]:
    """The stcl_jax modules `path` imports anywhere in its body (`from pkg import sub` counts as pkg.sub when
    sub is a module, else as pkg)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] == "stcl_jax"}
    return out


def _graph():
    modules = _modules()
    return modules, {m: {i for i in _imports(p, modules) if i in modules and i != m} for m, p in modules.items()}


def _is_cli(name: str, path: pathlib.Path) -> bool:
    return name in CLI_MODULES or path.name == "__main__.py" or "if __name__ == \"__main__\"" in path.read_text()


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    _, graph = _graph()
    assert _cycles(graph) == []


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_a_command_line_module():
    modules, graph = _graph()
    clis = {m for m, p in modules.items() if _is_cli(m, p)}
    assert {"stcl_jax.train", "stcl_jax.export", "stcl_jax.sweep"} <= clis
    libraries = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in LIBRARY_FOLDERS and m not in clis]
    bad = sorted(f"{m} -> {i}" for m in libraries for i in graph[m] & clis)
    assert bad == []


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_run_one_way(folder):
    _, graph = _graph()
    below = [m for m in graph if m.startswith(f"stcl_jax.{folder}.") or m == f"stcl_jax.{folder}"]
    assert below, f"no modules under stcl_jax/{folder}"
    bad = sorted(f"{m} -> {i}" for m in below for i in graph[m]
                 if i.split(".")[1] in FORBIDDEN[folder])
    assert bad == []


def test_data_layers_import_only_the_layers_below():
    _, graph = _graph()
    bad = []
    for m, imported in graph.items():
        parts = m.split(".")
        if parts[:2] != ["stcl_jax", "data"] or len(parts) == 2:
            continue
        allowed = DATA_LAYERS[parts[2]]
        bad += [f"{m} -> {i}" for i in imported if i.startswith("stcl_jax.data.") and i.split(".")[2] not in allowed]
    assert sorted(bad) == []
