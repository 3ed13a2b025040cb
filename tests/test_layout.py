"""The package's layering: every module imports only from its own layer or the ones below (docs/CONTRIBUTING.md),
and no two modules import each other, directly or around a loop."""
from __future__ import annotations

import ast
from pathlib import Path

import dtgnet
from dtgnet.registry import STUDENTS, TEACHER_SOURCES, TEACHER_TERMS

PACKAGE = Path(dtgnet.__file__).parent
LAYERS = [
    ("errors",),
    ("io", "dist", "registry"),
    ("config",),
    ("data",),
    ("teachers",),
    ("students",),
    ("objectives",),
    ("training",),
    ("evaluation",),
    ("experiments",),
    ("cli", "__init__", "__main__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported dtgnet module or name, whether at module level) for every import, lazy ones included."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(t, id(node) in top) for t in targets if t == "dtgnet" or t.startswith("dtgnet.")]
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYER["__init__"] if len(parts) == 1 else LAYER[parts[1]]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in modules():
        assert layer_of(module_name(path)) is not None


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in modules():
        me = module_name(path)
        for target, _ in imports(path):
            if layer_of(target) > layer_of(me):
                wrong.append(f"{me} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = {}
    known = {module_name(p) for p in modules()}
    for path in modules():
        me = module_name(path)
        edges = set()
        for target, at_top in imports(path):
            while target not in known:  # `from .x import name`: the module is x
                target = target.rpartition(".")[0]
            if at_top and target != me:
                edges.add(target)
        graph[me] = edges
    # a package's __init__ importing its own submodules is how it re-exports them, not a loop back into it
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_registries_know_every_builtin():
    assert set(TEACHER_SOURCES.names()) == {"efficientnet_lite0", "torchvision", "torchscript", "onnx", "action",
                                            "timm", "open_clip", "hf"}
    assert set(STUDENTS.names()) == {"tsn_r18", "r3d_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t", "vit_t",
                                     "vit_s", "vit_b"}
    assert TEACHER_TERMS.names() == ("regression", "relational", "segment")


def test_the_layering_test_sees_a_violation(tmp_path, monkeypatch):
    """A data module importing the trainer is caught (the check is not vacuous)."""
    bad = PACKAGE / "data" / "_layering_probe.py"
    bad.write_text("from ..training import train\n")
    try:
        try:
            test_no_module_imports_from_a_higher_layer()
        except AssertionError as e:
            assert "dtgnet.data._layering_probe imports dtgnet.training" in str(e)
        else:
            raise AssertionError("the violation went unnoticed")
    finally:
        bad.unlink()
