"""The library's imports flow one way (docs/architecture.md): every internal import is allowed by the table."""

from __future__ import annotations

import ast
from pathlib import Path

LEAVES = ("pipeline.config", "pipeline.schema", "pipeline.metrics", "pipeline.preprocess", "pipeline.symmetry",
          "pipeline.synthetic", "pipeline.windows", "pipeline.instances", "pipeline.objects")
RAY = ("pipeline.cluster", "pipeline.raypatch")
BELOW_STAGES = (*LEAVES, "pipeline.io", "pipeline.model", *RAY)
ALLOWED = {  # package -> what its modules may import from pipeline (besides their own package)
    "pipeline.config": (),
    "pipeline.schema": (),
    "pipeline.metrics": (),
    "pipeline.preprocess": (),
    "pipeline.symmetry": (),
    "pipeline.synthetic": (),
    "pipeline.windows": (),
    "pipeline.instances": (),
    "pipeline.objects": (),
    "pipeline.cluster": (),
    "pipeline.raypatch": (),
    "pipeline.io": LEAVES,
    "pipeline.model": (*LEAVES, "pipeline.io"),
    "pipeline.segment": BELOW_STAGES,
    "pipeline.train": BELOW_STAGES,
    "pipeline.report": (*LEAVES, "pipeline.io"),
    "pipeline.sample_data": (*LEAVES, "pipeline.io"),
    "pipeline.demo": (*BELOW_STAGES, "pipeline.segment", "pipeline.train", "pipeline.report", "pipeline.sample_data"),
}


def package_of(module: str) -> str:
    """Return the entry of ALLOWED that ``module`` belongs to (``pipeline.io.readers`` → ``pipeline.io``)."""
    return next(name for name in sorted(ALLOWED, key=len, reverse=True)
                if module == name or module.startswith(name + "."))


def internal_imports(path: Path) -> set[str]:
    """Return every ``pipeline.*`` module the file imports, at any depth of the code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("pipeline", "jobs"):
            found.update([f"{node.module}.{alias.name}" for alias in node.names] if node.module == "pipeline"
                         else [node.module])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] in ("pipeline", "jobs"))
    return found


def test_every_internal_import_goes_down_the_layers() -> None:
    wrong = []
    for path in sorted(Path("pipeline").rglob("*.py")):
        module = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
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


def test_the_table_knows_every_module() -> None:
    for path in Path("pipeline").rglob("*.py"):
        module = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        if module != "pipeline":
            assert package_of(module), module
