"""stcl_jax.data's imports run one way (the order in stcl_jax/data/__init__.py): no cycle, each layer imports only
the layers below it, and nothing in the package imports a command (label_map, cli, __main__). Read from the source
with ast (module-level and function-local imports alike), so nothing is imported to check it."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = "stcl_jax.data"
# module (or package prefix) -> the stcl_jax.data modules it may import (prefixes; "" = none)
ALLOWED = {
    "label_space": (), "formats": (), "augment": (),
    "datasets": ("label_space",),
    "records": ("formats", "datasets"),
    "sources": ("label_space", "datasets", "records"),
    "pipeline": ("label_space", "augment", "records", "sources"),
    "build": ("label_space", "formats", "datasets", "build"),
    "synthetic": ("datasets", "synthetic"),
    "label_map": ("label_space", "datasets", "records"),
}
COMMANDS = ("label_map", "build.cli", "build.__main__", "synthetic.cli", "synthetic.__main__")


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted((ROOT / "stcl_jax" / "data").rglob("*.py")):
        parts = path.relative_to(ROOT / "stcl_jax" / "data").with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, modules) -> set[str]:
    """The stcl_jax.data modules `path` imports (`from pkg import sub` counts as pkg.sub when sub is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if n[len(PKG) + 1:] in modules else node.module for n in names]
        for name in names:
            if name == PKG or name.startswith(PKG + "."):
                short = name[len(PKG) + 1:]
                assert short in modules, f"{path} imports {name}, which does not exist"
                found.add(short)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(p, modules) for m, p in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycle():
    graph, state = _graph(), {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                pytest.fail(f"import cycle: {' -> '.join(path[path.index(n):] + [n])}")
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m and m not in state:
            visit(m, [m])


def test_each_layer_imports_only_the_layers_below():
    for module, imported in _graph().items():
        if not module:                                   # stcl_jax/data/__init__.py: a docstring
            assert not imported
            continue
        allowed = ALLOWED[_layer(module)]
        bad = sorted(i for i in imported if not _under(i, allowed))
        assert not bad, f"stcl_jax.data.{module} imports {bad}; its layer may import only {allowed or 'nothing'}"


def test_nothing_in_the_package_imports_a_command():
    for module, imported in _graph().items():
        for cmd in COMMANDS:
            if cmd in imported and not (module.endswith("__main__") and cmd.endswith("cli")):
                pytest.fail(f"stcl_jax.data.{module} imports the command module {cmd}")
