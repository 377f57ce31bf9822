"""Calibration knows no family: no module of vkt.calibration imports vkt.models, vkt.training or vkt.cli (lazy imports
inside functions included), and the recipes do not import training (QAT comes in from the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

import vkt

ROOT = Path(vkt.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of the file names, at any depth (``from x import y`` gives x and x.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def reaching(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for f in files:
        hits = sorted(m for m in imported_modules(f) if m.startswith(forbidden) or m in ("vkt.models", "vkt.training"))
        if hits:
            bad[str(f.relative_to(ROOT))] = hits
    return bad


def test_the_scan_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from vkt.models.textdet import loader\n    import vkt.training.qat\n")
    assert imported_modules(f) >= {"vkt.models.textdet", "vkt.models.textdet.loader", "vkt.training.qat"}


def test_calibration_imports_no_recipe_training_or_cli():
    files = sorted((ROOT / "calibration").glob("*.py"))
    assert len(files) > 5
    assert reaching(files, ("vkt.models.", "vkt.training.", "vkt.cli.")) == {}
    # nor does it import the runtime's family pipelines (the gate runs candidates through plain runners)
    assert reaching(files, ("vkt.runtime.textdet", "vkt.runtime.detection", "vkt.runtime.txt2img")) == {}


def test_recipes_import_no_training_or_cli():
    files = [ROOT / "models" / "recipe.py", ROOT / "models" / "generic.py", *sorted(ROOT.glob("models/*/int8.py"))]
    assert len(files) == 5
    assert reaching(files, ("vkt.training.", "vkt.cli.")) == {}
