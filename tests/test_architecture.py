"""The library's imports flow one way (docs/architecture.md): every internal import is allowed by the
table, and no modules import each other in a circle, inside a package either."""

from __future__ import annotations

import ast
from pathlib import Path

LEAVES = ("pipeline.config", "pipeline.errors", "pipeline.schema", "pipeline.metrics", "pipeline.imaging",
          "pipeline.symmetry", "pipeline.synthetic", "pipeline.windows", "pipeline.instances", "pipeline.objects", "pipeline.figures")
RAY = ("pipeline.console", "pipeline.cluster", "pipeline.raypatch")
BELOW_STAGES = (*LEAVES, "pipeline.io", "pipeline.model", *RAY)
ALLOWED = {  # package -> what its modules may import from pipeline (besides their own package)
    "pipeline.config": (),
    "pipeline.errors": (),
    "pipeline.schema": (),
    "pipeline.metrics": (),
    "pipeline.imaging": ("pipeline.errors",),
    "pipeline.symmetry": (),
    "pipeline.synthetic": (),
    "pipeline.windows": (),
    "pipeline.instances": (),
    "pipeline.objects": (),
    "pipeline.figures": (),
    "pipeline.console": (),
    "pipeline.cluster": ("pipeline.console",),
    "pipeline.raypatch": (),
    "pipeline.io": LEAVES,
    "pipeline.model": (*LEAVES, "pipeline.io"),
    "pipeline.segment": BELOW_STAGES,
    "pipeline.train": (*BELOW_STAGES, "pipeline.fingerprint"),
    "pipeline.report": (*LEAVES, "pipeline.io"),
    "pipeline.fingerprint": BELOW_STAGES,
    "pipeline.sample_data": (*LEAVES, "pipeline.io"),
    "pipeline.demo": (*BELOW_STAGES, "pipeline.segment", "pipeline.train", "pipeline.report", "pipeline.sample_data"),
}


def package_of(module: str) -> str:
    """Return the entry of ALLOWED that ``module`` belongs to (``pipeline.io.readers`` → ``pipeline.io``)."""
    return next(name for name in sorted(ALLOWED, key=len, reverse=True)
                if module == name or module.startswith(name + "."))


def internal_imports(path: Path) -> set[str]:
    """Return every ``pipeline.*`` name the file imports, at any depth of the code (``TYPE_CHECKING`` too):
    ``from a.b import c`` gives ``a.b.c``, whether ``c`` is a module or a name defined in ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("pipeline", "jobs"):
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # a module, or a name in one
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] in ("pipeline", "jobs"))
    return found


def library_modules() -> dict[str, Path]:
    """Return every module of the library by dotted name (a package by its own name, for its ``__init__``)."""
    return {".".join(path.with_suffix("").parts).removesuffix(".__init__"): path
            for path in sorted(Path("pipeline").rglob("*.py"))}


def test_every_internal_import_goes_down_the_layers() -> None:
    wrong = []
    for module, path in library_modules().items():
        if module == "pipeline":
            continue
        own = package_of(module)
        for imported in internal_imports(path):
            if imported.startswith("jobs"):
                wrong.append(f"{module} imports {imported}: the library never imports jobs/")
                continue
            target = package_of(imported)
            if target != own and target not in ALLOWED[own]:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected groups of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def module_graph() -> dict[str, set[str]]:
    """Return each library module's imports of other library modules (a name imported from a package
    counts as its submodule where one of that name exists, else as the package's ``__init__``)."""
    modules = library_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for imported in internal_imports(path):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != module:
                targets.add(imported)
        graph[module] = targets
    return graph


def test_no_modules_import_each_other_in_a_circle() -> None:
    # a package's __init__ re-exports its modules; a module importing from its own package's __init__
    # instead of the module that defines the name is a circle through the __init__
    cycles = import_cycles(module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_table_knows_every_module() -> None:
    for module in library_modules():
        if module != "pipeline":
            assert package_of(module), module
