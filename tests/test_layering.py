"""The package's import graph follows its layers (README "Layout"): a module imports only from its own layer and the
layers below it, at module level. An import inside a function body is allowed only for a heavy optional dependency,
never for crate_mae itself, so the graph below is the whole graph."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module belongs to the first layer one of whose prefixes it starts with.
LAYERS = [
    ("base", ["crate_mae._version", "crate_mae.utils"]),
    ("models", ["crate_mae.models"]),
    # crate_mae.checkpoint and crate_mae.hub: the deprecated shims of crate_mae.io, for one release
    ("io", ["crate_mae.io", "crate_mae.checkpoint", "crate_mae.hub"]),
    ("data", ["crate_mae.data"]),
    ("engine", ["crate_mae.engine"]),
    # analysis and evaluation are peers (neither imports the other); pretraining uses both (the k-NN monitor and
    # the reconstruction figure).
    ("analysis", ["crate_mae.analysis"]),
    ("evaluation", ["crate_mae.evaluation"]),
    ("training", ["crate_mae.training"]),
    # timm_models registers the encoders with timm (io + data's statistics); the package facade re-exports.
    ("apps", ["crate_mae.cli", "crate_mae.demo", "crate_mae.timm_models", "crate_mae.__main__", "crate_mae"]),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# Imported where they are needed: slow to import, optional, or platform-specific.
HEAVY = (
    "sklearn",
    "skimage",
    "matplotlib",
    "scipy",
    "huggingface_hub",
    "wids",
    "webdataset",
    "threadpoolctl",
    "torch.utils.tensorboard",
    "fcntl",
)
PEERS = {frozenset({"analysis", "evaluation"})}


def layer_of(module: str) -> str:
    for name, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def allowed(src: str, dst: str) -> bool:
    a, b = layer_of(src), layer_of(dst)
    if frozenset({a, b}) in PEERS:
        return False
    return RANK[b] <= RANK[a]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path):
    """(line, imported crate_mae module, inside a function?) for every import of the package in ``path``."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from . import x" names a submodule when x is one
            targets = [
                f"{base}.{a.name}"
                if (SRC / Path(*f"{base}.{a.name}".split("."))).exists()
                or (SRC / Path(*f"{base}.{a.name}".split("."))).with_suffix(".py").exists()
                else base
                for a in node.names
            ]
        for t in targets:
            if t == "crate_mae" or t.startswith("crate_mae."):
                yield node.lineno, t, id(node) in in_function


def edges():
    for path in sorted((SRC / "crate_mae").rglob("*.py")):
        for line, target, inside in imports(path):
            yield path, line, module_name(path), target, inside


def test_every_module_has_a_layer():
    for path in (SRC / "crate_mae").rglob("*.py"):
        layer_of(module_name(path))


def test_imports_go_down_the_layers():
    bad = [
        f"{p.relative_to(SRC)}:{line}: {src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})"
        for p, line, src, dst, _ in edges()
        if not allowed(src, dst)
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_package_import_hides_inside_a_function():
    bad = [
        f"{p.relative_to(SRC)}:{line}: {src} imports {dst} inside a function"
        for p, line, src, dst, inside in edges()
        if inside
    ]
    assert not bad, "move these imports to the top of the module:\n" + "\n".join(bad)


def test_only_heavy_optional_dependencies_are_imported_inside_functions():
    bad = []
    for path in sorted((SRC / "crate_mae").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for n in ast.walk(fn):
                    if isinstance(n, (ast.Import, ast.ImportFrom)) and not getattr(n, "level", 0):
                        m = n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
                        if not any(m == h or m.startswith(h + ".") for h in HEAVY):
                            bad.append(f"{path.relative_to(SRC)}:{n.lineno}: {m}")
    assert not bad, "import these at the top of the module (or add a heavy dependency to HEAVY):\n" + "\n".join(bad)


def test_the_checker_names_an_upward_import():
    assert not allowed("crate_mae.models.registry", "crate_mae.checkpoint")
    assert not allowed("crate_mae.models.registry", "crate_mae.io.loading")
    assert allowed("crate_mae.io.loading", "crate_mae.models.registry")
    assert not allowed("crate_mae.analysis.report", "crate_mae.evaluation.features")
    assert not allowed("crate_mae.data.shards", "crate_mae")
    assert allowed("crate_mae.training.pretrain", "crate_mae.evaluation.knn")
