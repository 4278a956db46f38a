"""Dependencies run one way (``DESIGN.md``, "Layout"), checked over every module of the project.

Every ``import`` statement of every module of ``distilrec/``, ``training/``, ``services/`` and
``dashboards/`` is read from its syntax tree, those inside functions and ``if`` blocks included, and:

- the core (every module of ``distilrec/`` but ``distilrec/cli.py`` and ``distilrec/bench/``) imports no
  ``ray``, ``training``, ``services``, ``distilrec.bench`` or ``distilrec.cli``;
- ``training/`` and ``services/`` import neither ``distilrec.bench`` nor ``distilrec.cli``, nor each other;
  ``dashboards/`` imports none of the four;
- the project's modules import each other without a circle (function-level imports count too);
- the repository holds one ``free_port`` function, one ``percentile`` function, and one argument
  parser per command.

A fresh interpreter that imports every core module also ends with no Ray, training or services module
loaded (what the syntax cannot see: an import made by a third-party package).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("distilrec", "training", "services", "dashboards")
EDGE = ("distilrec.cli", "distilrec.bench")  # the command line and the benchmarks: the modules that know the apps


def _under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    """``name`` is one of ``prefixes`` or a module inside one."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def project_modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = project_modules()
CORE = sorted(m for m in MODULES if _under(m, "distilrec") and not _under(m, EDGE))


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """``(absolute dotted name, line)`` of everything that ``module`` imports, anywhere in the file.
    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            out.append((source, node.lineno))
            out += [(f"{source}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return out


def _project_target(name: str) -> str | None:
    """The project module that importing ``name`` runs: its longest prefix that is a module."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """``{module: the project modules it imports}`` (a module's own package excluded: importing a
    submodule runs its package's ``__init__`` first, which is not a circle of the code's making)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_project_target(name) for name, _ in imported_names(module, path)}
        graph[module] = {t for t in targets if t and t != module and not _under(module, t)}
    return graph


def strong_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan): each is a set of modules that
    import each other, directly or not.

    >>> strong_components({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    [['a', 'b', 'c']]
    >>> strong_components({"a": {"b"}, "b": set()})
    []
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
    return sorted(out)


def shortest_circle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest circle from the component's first module back to it (breadth first).

    >>> shortest_circle({"a": {"b", "c"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c"])
    ['a', 'c', 'a']
    """
    members, start = set(component), component[0]
    came_from: dict[str, str] = {start: start}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return path[::-1] + [start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise ValueError(f"{component} is not a strongly connected component")


def _violations(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
            for m in modules for name, line in imported_names(m, MODULES[m]) if _under(name, forbidden)]


def test_every_module_is_checked():
    for pkg in PACKAGES:
        assert any(_under(m, pkg) for m in MODULES), f"no module found under {pkg}/"
    assert {"distilrec.cli", "distilrec.bench.loadgen", "distilrec.config", "distilrec.data.dataset",
            "training.pipeline", "services.ingress", "dashboards.core"} <= set(MODULES)
    assert "distilrec.cli" not in CORE and not any(_under(m, "distilrec.bench") for m in CORE)
    for module, path in MODULES.items():
        ast.parse(path.read_text(), filename=str(path))  # every file is read, none skipped


def test_imported_names_sees_function_level_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n"
                 "def g():\n"
                 "    from ray import serve\n"
                 "    if True:\n"
                 "        import training.pipeline as tp\n"
                 "from .sibling import x\n")
    assert imported_names("distilrec.data.m", f) == [
        ("os", 1), ("distilrec.data.sibling", 6), ("distilrec.data.sibling.x", 6), ("ray", 3), ("ray.serve", 3),
        ("training.pipeline", 5)]


def test_the_core_imports_no_ray_no_app_and_no_edge_module():
    bad = _violations(CORE, ("ray", "training", "services") + EDGE)
    assert not bad, "the core (distilrec/ but cli.py and bench/) must not import these:\n" + "\n".join(bad)


def test_the_apps_import_neither_the_benchmarks_nor_the_cli_nor_each_other():
    training = [m for m in MODULES if _under(m, "training")]
    services = [m for m in MODULES if _under(m, "services")]
    dashboards = [m for m in MODULES if _under(m, "dashboards")]
    bad = (_violations(training, EDGE + ("services",)) + _violations(services, EDGE + ("training",))
           + _violations(dashboards, EDGE + ("training", "services")))
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = import_graph()
    found = [f"{', '.join(c)}: e.g. {' -> '.join(shortest_circle(graph, c))}" for c in strong_components(graph)]
    assert not found, "modules that import each other:\n" + "\n".join(found)


def _tracked_python_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                               cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's files cannot be listed")
    return [ROOT / n for n in names if (ROOT / n).exists()]


# Functions that exist once in the repository: their one home.
ONE_DEFINITION = {
    "free_port": "distilrec/ports.py",  # a free local TCP port
    "percentile": "distilrec/stats.py",  # the latency percentile of the benchmarks and the tests (nearest rank)
}


@pytest.mark.parametrize("name", sorted(ONE_DEFINITION))
def test_one_definition_of_each_shared_helper(name):
    """Every place that needs a free port or a latency percentile calls :func:`distilrec.ports.free_port`
    or :func:`distilrec.stats.percentile`, never a copy of its own (a copy drifts: the tests' p99 and the
    benchmarks' must be the same figure)."""
    found = []
    for path in _tracked_python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.endswith(name) \
                    and not node.name.startswith("test_"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    home = ONE_DEFINITION[name]
    assert found == [f"{home}:{_line_of(home, name)} {name}"], found


def _line_of(rel: str, function: str) -> int:
    tree = ast.parse((ROOT / rel).read_text())
    return next(n.lineno for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)


# The modules that build an argument parser, and the command each one parses. The user's commands are
# the CLI's subcommands; the others are a process's own entry point, no subcommand of the CLI.
PARSERS = {
    "distilrec/cli.py": "distilrec (every user command: demo, pipeline, serve, bench ...)",
    "distilrec/bench/loadgen.py": "python -m distilrec.bench.loadgen PLAN RESULT: the load generator's own process",
    "distilrec/bench/paths.py": "one variant of bench paths, the process that run_paths starts for it",
    "dashboards/__main__.py": "python -m dashboards: renders the dashboards (make dashboards)",
    "k8s/generate.py": "python k8s/generate.py: renders the plain manifests (make k8s-manifests)",
}


def test_one_argument_parser_per_command():
    found: dict[str, int] = {}
    for path in _tracked_python_files():
        rel = str(path.relative_to(ROOT))
        if rel.startswith("tests/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name == "ArgumentParser":
                    found[rel] = found.get(rel, 0) + 1
    assert found == {rel: 1 for rel in PARSERS}, (
        f"argument parsers {found}; expected one in each of {sorted(PARSERS)} (a user command belongs in "
        "distilrec/cli.py)")


def test_core_modules_load_no_ray_and_no_app_at_run_time():
    # A fresh interpreter: other suites in the same process may have imported Ray already.
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'training', 'services')\n"
        "             or m == 'distilrec.cli' or m.startswith('distilrec.bench'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
