"""The house's layering, held: model/ at the ground, video/ beside it, training/ and service/
above both, and no import circle inside model/ (the task heads import the video model, never
the other way round)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "model": {"model"},
    "video": {"video"},
    "training": {"model", "video", "training"},
    "service": {"model", "video", "service"},
}


def imports_of(path: Path) -> set[str]:
    """Dotted names of the project modules `path` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] in ALLOWED}


def test_packages_import_only_downwards():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imports_of(path):
                if name.split(".")[0] not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_video_model_knows_no_task():
    """model/zeroi2v.py is the backbone and its composition with a head: it imports no head."""
    heads = {"model.classification", "model.detection", "model.tasks"}
    assert not imports_of(ROOT / "model" / "zeroi2v.py") & heads
