"""The import structure of edgeft/ and the device layer targets/, read from the code with ``ast``.

Layers, lowest first (a module imports only from its own layer or below):

- ``device``: the device layer ``targets/`` (installed as ``edgeft.targets``): standard library and
  numpy only, imports nothing of the host.
- ``base``: errors, file writing, progress, interrupts, output folders, ``__version__``.
- ``core``: TensorFlow compatibility, preprocessing, data loading and decoding, the run directory,
  the embedding runtime.
- ``steps``: one package per pipeline step; a step imports another step only where
  ``STEP_IMPORTS`` says so.
- ``app``: the CLI and the demo that chain the steps.

Edges are explicit imports anywhere in a module: at module level, inside functions and under
``if TYPE_CHECKING:`` (an annotation that needs a higher layer is a layering fault too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGE = "edgeft.targets"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("device", (DEVICE_PACKAGE,)),
    ("base", ("edgeft", "edgeft.errors", "edgeft.fileio", "edgeft.progress", "edgeft.interrupts",
              "edgeft.outputs")),
    ("core", ("edgeft.tfcompat", "edgeft.preprocessing", "edgeft.data", "edgeft.run", "edgeft.runtime")),
    ("steps", ("edgeft.backbones", "edgeft.training", "edgeft.quantization", "edgeft.calibration",
               "edgeft.evaluation", "edgeft.export", "edgeft.bench", "edgeft.bundle", "edgeft.predict",
               "edgeft.testing")),
    ("app", ("edgeft.demo", "edgeft.cli", "edgeft.__main__")),
)
# Which other steps a step imports (everything else a step needs is in a lower layer).
STEP_IMPORTS: dict[str, frozenset[str]] = {
    "edgeft.training": frozenset({"edgeft.backbones"}),
    "edgeft.evaluation": frozenset({"edgeft.training"}),  # the training pipeline's batches
    "edgeft.export": frozenset({"edgeft.calibration", "edgeft.quantization"}),  # post-training weight rounding
    "edgeft.bundle": frozenset({"edgeft.bench"}),  # the device app, profiles, recommendation
    "edgeft.testing": frozenset({"edgeft.backbones"}),
}
HEAVY = ("tensorflow", "tf_keras", "keras")


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a module of the project where it is one."""

    source: str  # importing module
    target: str  # imported module (dotted name as written, resolved for relative imports)
    names: tuple[str, ...]  # for ``from X import a, b``: a, b; for ``import X as y``: ()
    alias: str | None  # the local name bound to the module, where one is bound
    line: int


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for edgeft/ (without the link to targets/ and bundle templates) and targets/."""
    found: dict[str, Path] = {}
    for folder, package in ((ROOT / "edgeft", "edgeft"), (ROOT / "targets", DEVICE_PACKAGE)):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if (package == "edgeft" and parts[0] == "targets") or "templates" in parts:
                continue
            dotted = [package, *parts]
            if dotted[-1] == "__init__":
                dotted.pop()
            found[".".join(dotted)] = path
    return found


MODULES = _modules()


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: n.lineno)


def imports_of(module: str, path: Path) -> list[Import]:
    """The imports a module runs, with relative names made absolute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    result = []
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            result += [Import(module, a.name, (), a.asname, node.lineno) for a in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        names = tuple(a.name for a in node.names)
        submodules = [a for a in node.names if f"{base}.{a.name}" in MODULES]
        result += [Import(module, f"{base}.{a.name}", (), a.asname or a.name, node.lineno) for a in submodules]
        rest = tuple(n for n in names if f"{base}.{n}" not in MODULES)
        if rest or not submodules:
            result.append(Import(module, base, rest, None, node.lineno))
    return result


ALL_IMPORTS = [imp for module, path in MODULES.items() for imp in imports_of(module, path)]


def _project_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in ALL_IMPORTS:
        target = _project_module(imp.target)
        if target and target != imp.source:
            graph[imp.source].add(target)
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the LAYERS entry that holds ``module``) by the longest matching prefix."""
    best: tuple[int, str] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "edgeft" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return best


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


# --------------------------------------------------------------------------- the graph itself


def test_the_graph_sees_known_imports() -> None:
    graph = import_graph()
    assert len(MODULES) > 60
    assert "edgeft.targets.images" in graph["edgeft.data.images"] or DEVICE_PACKAGE in graph["edgeft.data.images"]
    assert "edgeft.errors" in graph["edgeft.cli"]
    assert "edgeft.targets.contract" in graph["edgeft.targets.images"]  # relative imports resolve
    assert "edgeft.tfcompat" in graph["edgeft.run.rundir"] or "edgeft.tfcompat" in graph["edgeft.training.model"]


def test_imports_in_functions_and_under_type_checking_count(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edgeft.cli import cli\n"
                    "def f():\n    from . import errors\n    import edgeft.export.spec as spec\n")
    targets = {imp.target for imp in imports_of("edgeft.probe", path)}
    assert {"edgeft.cli", "edgeft.errors", "edgeft.export.spec"} <= targets


def test_cycle_finder_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = []
    for source, targets in import_graph().items():
        for target in targets:
            here, there = layer_of(source)[0], layer_of(target)[0]
            if there > here:
                wrong.append(f"{source} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    assert wrong == []


def test_steps_import_other_steps_only_as_declared() -> None:
    steps = LAYERS[[name for name, _ in LAYERS].index("steps")][1]
    undeclared = set()
    for source, targets in import_graph().items():
        here = layer_of(source)[1]
        for target in targets:
            there = layer_of(target)[1]
            if here in steps and there in steps and there != here and there not in STEP_IMPORTS.get(here, ()):
                undeclared.add(f"{source} imports {target}: add {there!r} to STEP_IMPORTS[{here!r}] if it is meant")
    assert sorted(undeclared) == []
    for step, others in STEP_IMPORTS.items():  # no stale entry
        used = {layer_of(t)[1] for s, ts in import_graph().items() if layer_of(s)[1] == step for t in ts}
        assert others <= used, (step, others - used)


def _package_of(module: str) -> str:
    """The top-level unit a module belongs to: its LAYERS entry (a package such as ``edgeft.data``, or a module)."""
    return layer_of(module)[1]


def test_no_module_imports_private_names_of_another_package() -> None:
    """Helpers whose names start with ``_`` stay inside their package (``evaluation`` once borrowed ``data``'s)."""
    borrowed = []
    for imp in ALL_IMPORTS:
        target = _project_module(imp.target)
        if target and _package_of(target) != _package_of(imp.source):
            private = [name for name in imp.names if name.startswith("_") and not name.endswith("__")]
            borrowed += [f"{imp.source}:{imp.line} imports {target}.{name}" for name in private]
    assert borrowed == []


# --------------------------------------------------------------------------- the device layer


def test_the_device_layer_imports_nothing_of_the_host() -> None:
    for imp in ALL_IMPORTS:
        target = _project_module(imp.target)
        if imp.source.startswith(DEVICE_PACKAGE) and target:
            assert target.startswith(DEVICE_PACKAGE), f"{imp.source}:{imp.line} imports {imp.target}"


def _host_files() -> list[tuple[str, Path]]:
    host = [(m, p) for m, p in MODULES.items() if not m.startswith(DEVICE_PACKAGE)]
    return host + [(f"benchmarks.{p.stem}", p) for p in sorted((ROOT / "benchmarks").glob("*.py"))]


def test_the_host_imports_the_device_layer_only_through_its_public_names() -> None:
    import edgeft.targets as device

    public = set(device.__all__)
    assert not any(name.startswith("_") for name in public)
    for module, path in _host_files():
        aliases = set()
        for imp in imports_of(module, path):
            where = f"{path.relative_to(ROOT)}:{imp.line}"
            if imp.target == DEVICE_PACKAGE:
                assert set(imp.names) <= public, f"{where} imports {set(imp.names) - public} from {DEVICE_PACKAGE}"
                if imp.alias:
                    aliases.add(imp.alias)
            else:
                assert not imp.target.startswith(DEVICE_PACKAGE + "."), f"{where} imports {imp.target}"
        for node in ast.walk(ast.parse(path.read_text())):  # device.name through a module alias
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                dunder = node.attr.startswith("__") and node.attr.endswith("__")
                assert node.attr in public or dunder, f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}"


# --------------------------------------------------------------------------- what imports what, at run time


def test_only_the_cli_imports_click() -> None:
    users = sorted({imp.source for imp in ALL_IMPORTS if imp.target.split(".")[0] == "click"})
    assert users == ["edgeft.cli"]


@pytest.mark.parametrize("package", ["rich", "PIL"])
def test_optional_host_libraries_are_imported_inside_functions(package: str) -> None:
    """rich draws only when a command runs and Pillow decodes only when a file is read: ``--help`` needs neither."""
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert all(n.split(".")[0] != package for n in names), f"{module}:{node.lineno} imports {package}"


def test_importing_edgeft_the_cli_and_the_runtime_loads_no_tensorflow() -> None:
    code = (
        "import sys\n"
        f"heavy = lambda: sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
        "import edgeft\nprint('edgeft', heavy())\n"
        "import edgeft.runtime\nprint('edgeft.runtime', heavy(), 'click' in sys.modules)\n"
        "from edgeft.cli import cli\n"
        "try:\n    cli.main(['--help'], prog_name='edgeft', standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "print('edgeft.cli', heavy())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("edgeft")]
    assert lines == ["edgeft []", "edgeft.runtime [] False", "edgeft.cli []"], out.stdout


def test_one_image_decoder() -> None:
    """Only the device layer's ``images`` module opens image files: training, predict, runtime and bundles share it."""
    decoders = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("open", "exif_transpose") and (
                    isinstance(node.value, ast.Name) and node.value.id in ("Image", "ImageOps")):
                decoders.add(module)
    assert decoders == {"edgeft.targets.images"}
