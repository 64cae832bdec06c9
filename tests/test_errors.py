"""Error kinds are one registry: every kind raised is registered, used through the registry, and documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pipeline.errors import MEANINGS, ErrorKind, SampleError


def documented_kinds() -> set[str]:
    """Return the kinds in docs/segmentation.md's table of ``error_kind`` values."""
    section = Path("docs/segmentation.md").read_text().split("## Bad input: `error_kind`", 1)[1]
    rows = section.split("|---|---|", 1)[1].split("\n\n", 1)[0]  # the table's body, below its header
    return set(re.findall(r"^\| `([a-z_]+)` \|", rows, flags=re.MULTILINE))


def test_every_registered_kind_is_documented_and_every_documented_kind_registered() -> None:
    registered = {kind.value for kind in ErrorKind}
    assert documented_kinds() == registered
    assert set(MEANINGS) == set(ErrorKind)


def test_no_kind_is_written_as_a_string_literal_outside_the_registry() -> None:
    """Raise sites name kinds through ErrorKind, so a misspelt kind fails at import, not in a report."""
    values = {kind.value for kind in ErrorKind}
    literal = []
    for path in sorted(Path("pipeline").rglob("*.py")):
        if path == Path("pipeline/errors.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values:
                literal.append(f"{path}:{node.lineno}: {node.value!r}")
    assert not literal, "use ErrorKind.<NAME> instead of:\n" + "\n".join(literal)


def test_a_sample_error_takes_only_registered_kinds() -> None:
    assert SampleError("broken", ErrorKind.BAD_MASK).kind == "bad_mask"
    try:
        SampleError("broken", "bad_masks")  # type: ignore[arg-type]
    except ValueError as exc:
        assert "bad_masks" in str(exc)
    else:
        raise AssertionError("an unregistered kind was accepted")
