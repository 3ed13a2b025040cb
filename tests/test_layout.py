"""The package's layering: every module imports only from its own layer or the ones below (docs/CONTRIBUTING.md),
and no two modules import each other, directly or around a loop."""
from __future__ import annotations

import ast
import dataclasses
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
    ("evaluation", "inference"),
    ("experiments",),
    ("cli", "__init__", "__main__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path, package_dir: Path = PACKAGE) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package_dir: Path = PACKAGE) -> list[tuple[str, bool]]:
    """(imported dtgnet module or name, whether at module level) for every import, lazy ones included."""
    this = module_name(path, package_dir)
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


def upward_imports(package_dir: Path = PACKAGE) -> list[str]:
    """Every import of a module from a higher layer than the importer's."""
    wrong = []
    for path in sorted(package_dir.rglob("*.py")):
        me = module_name(path, package_dir)
        wrong += [f"{me} imports {t}" for t, _ in imports(path, package_dir) if layer_of(t) > layer_of(me)]
    return wrong


def import_cycle(package_dir: Path = PACKAGE) -> list[str]:
    """A loop of module-level imports, as the modules on it, or [] when there is none."""
    paths = sorted(package_dir.rglob("*.py"))
    known = {module_name(p, package_dir) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        me = module_name(path, package_dir)
        edges = set()
        for target, at_top in imports(path, package_dir):
            while target not in known:  # `from .x import name`: the module is x
                target = target.rpartition(".")[0]
            # a package's __init__ importing its own submodules re-exports them: no loop back into it
            if at_top and target != me and not me.startswith(target + "."):
                edges.add(target)
        graph[me] = edges
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (loop := visit(nxt, stack + [node])):
                return loop
        state[node] = 2
        return []

    for name in sorted(graph):
        if name not in state and (loop := visit(name, [])):
            return loop
    return []


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)) is not None


def test_no_module_imports_from_a_higher_layer():
    assert not upward_imports(), "\n".join(upward_imports())


def test_module_level_imports_have_no_cycle():
    assert not import_cycle(), " -> ".join(import_cycle())


def test_the_registries_know_every_builtin():
    assert set(TEACHER_SOURCES.names()) == {"efficientnet_lite0", "torchvision", "torchscript", "onnx", "action",
                                            "timm", "open_clip", "hf", "torchvision_video", "hf_video", "student"}
    assert set(STUDENTS.names()) == {"tsn_r18", "r3d_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t", "vit_t",
                                     "vit_s", "vit_b", "tsn"}
    assert TEACHER_TERMS.names() == ("regression", "relational", "segment", "token")


def test_the_checks_see_a_violation_and_a_cycle(tmp_path):
    """On a copy of the package: a data module importing the trainer, and two modules importing each other,
    are caught (the checks are not vacuous)."""
    import shutil

    copy = tmp_path / "dtgnet"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert not upward_imports(copy) and not import_cycle(copy)
    (copy / "data" / "probe_up.py").write_text("from ..training import train\n")
    assert upward_imports(copy) == ["dtgnet.data.probe_up imports dtgnet.training"]
    (copy / "data" / "probe_a.py").write_text("from . import probe_b\n")
    (copy / "data" / "probe_b.py").write_text("from .probe_a import x\n")
    loop = import_cycle(copy)
    assert "dtgnet.data.probe_a" in loop and "dtgnet.data.probe_b" in loop


def test_the_readme_python_api_runs_as_written(tmp_path, monkeypatch):
    """The README's Python API block, run as a user would paste it (its last line loads a run's student, so a
    tiny one is saved at that path first)."""
    import re

    import torch

    from dtgnet import Config, build_student
    from dtgnet.students import save_student_safetensors

    readme = (PACKAGE.parent / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    cfg = Config()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "dtg_ft").mkdir(parents=True)
    save_student_safetensors(build_student(cfg, {}, 3), tmp_path / "runs" / "dtg_ft" / "student.safetensors",
                             {"config": dataclasses.asdict(cfg), "teacher_heads": {}, "num_classes": 3,
                              "self_head": True, "classes": ["a", "b", "c"]})
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"].total) and namespace["trained"].classifier is not None
