"""A layering rule CONTRIBUTING.md states, checked on the source: a module named ``_*.py`` is
private to its package; no other package imports it (``_compat`` aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fal_provider"


def imports(source: str, where: Path) -> list[tuple[int, list[str]]]:
    """Every ``fal_provider`` name a module at ``where`` (relative to the package) imports, as dotted
    parts with relative imports resolved, and its line."""
    here = ["fal_provider", *where.parent.parts]
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            found.append((node.lineno, module))
            found.extend((node.lineno, [*module, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")) for alias in node.names)
    return [(line, parts) for line, parts in found if parts[:1] == ["fal_provider"]]


def foreign_private(source: str, where: Path) -> list[str]:
    """The private modules of other packages that the module at ``where`` imports."""
    own_package = ["fal_provider", *where.parent.parts]
    hits = []
    for line, parts in imports(source, where):
        for index, part in enumerate(parts[1:], start=1):
            if not part.startswith("_") or part.startswith("__"):
                continue
            is_module = PACKAGE.joinpath(*parts[1 : index + 1]).with_suffix(".py").is_file()
            if is_module and part != "_compat" and parts[:index] != own_package:
                hits.append(f"{where}:{line} imports {'.'.join(parts[: index + 1])}")
            break
    return list(dict.fromkeys(hits))


def test_no_module_imports_another_packages_private_module() -> None:
    offenders = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in foreign_private(path.read_text(), path.relative_to(PACKAGE))
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_a_foreign_private_import_and_allows_its_own() -> None:
    source = "from fal_provider.hooks._transport import Call\nfrom fal_provider._compat import TaskDeferred\n"
    assert foreign_private(source, Path("operators/probe.py")) == [
        "operators/probe.py:1 imports fal_provider.hooks._transport"
    ]
    assert foreign_private(source, Path("hooks/probe.py")) == []
    assert foreign_private("from ..hooks import _sse\n", Path("triggers/probe.py")) == [
        "triggers/probe.py:1 imports fal_provider.hooks._sse"
    ]
