"""Imports point down the layer table of docs/DESIGN.md, and nothing closes a cycle.

Every `import` under src/thumbview is read with `ast`, those inside functions (and under
`if TYPE_CHECKING:`) included: a lazy import is a design dependency all the same. The layer
table is parsed from docs/DESIGN.md, so the document and the rule cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import thumbview
from _model_fixture import model_dir  # noqa: F401  (the shared session fixture)

SRC = Path(thumbview.__file__).parent
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"


# ----- reading the code --------------------------------------------------------------------
def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, current: str, is_package: bool, modules: set[str]) -> list[str]:
    """The thumbview modules one import statement loads (a `from pkg import submodule` is the
    submodule; any other name is its module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = current.split(".")[: len(current.split(".")) - (not is_package)]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name.startswith("thumbview"):
            found.append(name)
    return found


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """{module: {imported module: line of the first such import}} for every module in `src`."""
    paths = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {m: {} for m in paths}
    for mod, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, mod, path.name == "__init__.py", set(paths)):
                    if target != mod:
                        graph[mod].setdefault(target, node.lineno)
    return graph


def package_of(module: str) -> str:
    """`thumbview.predict.model` -> `thumbview.predict`; top-level modules are their own unit."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ----- reading the table -------------------------------------------------------------------
def layer_table(design: Path = DESIGN) -> dict[str, int]:
    """{`thumbview.x`: layer number} from the `## Layers` table of docs/DESIGN.md."""
    text = design.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for row in re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", section, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", row[1]):
            layers["thumbview" if name == "thumbview" else f"thumbview.{name}"] = int(row[0])
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest table entry that is `module` or a package above it."""
    while module:
        if module in layers:
            return layers[module]
        module = module.rsplit(".", 1)[0] if "." in module else ""
    return None


def violations(graph: dict[str, dict[str, int]], layers: dict[str, int]) -> list[str]:
    """Each import that points up the table, or sideways into another unit of its layer."""
    bad = []
    for mod, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            if package_of(mod) == package_of(target):
                continue  # inside one package: its files are ordered by the file-cycle rule
            here, there = layer_of(mod, layers), layer_of(target, layers)
            if here is not None and there is not None and there >= here:
                way = "up" if there > here else "sideways"
                bad.append(f"{mod}:{line} imports {target} ({way}: layer {here} -> {there})")
    return bad


# ----- the rules -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


@pytest.fixture(scope="module")
def layers() -> dict[str, int]:
    if not DESIGN.is_file():
        pytest.skip("docs/DESIGN.md is not beside the tests (installed package)")
    return layer_table()


def test_no_import_cycle_between_files(graph):
    found = cycles({m: set(t) for m, t in graph.items()})
    assert not found, "files that import each other in a ring:\n" + "\n".join(map(str, found))


def test_no_import_cycle_between_packages(graph):
    packages: dict[str, set[str]] = defaultdict(set)
    for mod, targets in graph.items():
        for target in targets:
            if package_of(target) != package_of(mod) and "thumbview" not in (mod, target):
                packages[package_of(mod)].add(package_of(target))
    found = cycles(packages)
    assert not found, "packages that import each other in a ring:\n" + "\n".join(map(str, found))


def test_every_module_has_a_layer(graph, layers):
    missing = sorted(m for m in graph if layer_of(m, layers) is None)
    assert not missing, "add these to the layer table in docs/DESIGN.md:\n" + "\n".join(missing)


def test_every_import_points_down_the_layer_table(graph, layers):
    bad = violations(graph, layers)
    assert not bad, "imports against docs/DESIGN.md's layer table:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_promise(tmp_path):
    """A planted ring, a lazy upward import and a sideways one are all found, by name."""
    pkg = tmp_path / "thumbview"
    for rel, code in {
        "__init__.py": "",
        "units.py": "def f():\n    from thumbview.data import a\n",  # lazy, up
        "data/__init__.py": "",
        "data/a.py": "from thumbview.data.b import x\n",
        "data/b.py": "from . import a\nx = 1\n",  # relative: closes a ring
        "embed/__init__.py": "",
        "embed/e.py": "import thumbview.collect.c\n",  # sideways
        "collect/__init__.py": "",
        "collect/c.py": "",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(code)
    g = import_graph(pkg)
    assert cycles({m: set(t) for m, t in g.items()}) == [["thumbview.data.a", "thumbview.data.b"]]
    table = {"thumbview.units": 0, "thumbview.data": 1, "thumbview.embed": 2,
             "thumbview.collect": 2}  # fmt: skip
    assert violations(g, table) == [
        "thumbview.embed.e:1 imports thumbview.collect.c (sideways: layer 2 -> 2)",
        "thumbview.units:2 imports thumbview.data.a (up: layer 0 -> 1)",
    ]


def test_the_table_is_read_from_the_document(layers):
    """Spot checks that the parse found the rows (a broken table would pass everything)."""
    assert layers["thumbview.units"] < layers["thumbview.data"] < layers["thumbview.embed"]
    assert layers["thumbview.predict"] < layers["thumbview.inference"] < layers["thumbview.frames"]
    assert layers["thumbview.serve"] < layers["thumbview.cli"]


# ----- what a prediction loads -------------------------------------------------------------
TRAINING_MODULES = ("thumbview.predict.workflow", "thumbview.finetune.train", "thumbview.bot.train")


def loaded_after(code: str) -> set[str]:
    """thumbview modules in sys.modules after running `code` in a fresh interpreter."""
    probe = (
        code + "\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith('thumbview')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def finetuned_dir(tmp_path_factory) -> Path:
    """The smallest fine-tuned model: a test ViT, one epoch, on 48 synthetic thumbnails."""
    torch = pytest.importorskip("torch")
    from thumbview.data.dataset import load_dataset
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.finetune.config import FinetuneConfig
    from thumbview.finetune.train import finetune

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("layers-ft")
    data = make_synthetic(root / "ds", SynthConfig(n=48, seed=1, n_channels=8))
    config = FinetuneConfig(backbone="test-vit", batch_size=16, workers=0, epochs=1)
    finetune(load_dataset(data), config, root / "model")
    return root / "model"


def _images(model: Path, tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.new("RGB", (160, 90), (200, 40, 40)).save(a)
    Image.new("RGB", (160, 90), (20, 40, 220)).save(b)
    return a, b


CONSUMERS = """
from pathlib import Path
from PIL import Image
from fastapi.testclient import TestClient
from thumbview.compare import compare
from thumbview.frames import rank_frames  # noqa: F401  (frames reaches the model like compare)
from thumbview.inference import LoadedPredictor
from thumbview.inference.predictor import predict_files
from thumbview.serve.app import create_app

model, a, b = Path({model!r}), {a!r}, {b!r}
assert len(predict_files(model, [a], ["a title"])) == 1
loaded = LoadedPredictor.load(model)
assert len(compare(loaded, [Image.open(a), Image.open(b)], ["a", "b"]).candidates) == 2
with TestClient(create_app(model), base_url="http://127.0.0.1:8000") as client:
    with open(a, "rb") as f:
        resp = client.post("/predict", files={{"image": ("a.jpg", f, "image/jpeg")}})
    assert resp.status_code == 200, resp.text
"""


@pytest.mark.parametrize("kind", ["frozen features", "fine-tuned"])
def test_a_prediction_loads_no_training_code(kind, model_dir, finetuned_dir, tmp_path):  # noqa: F811
    """predict, compare, frames and serve reach a loaded model of either kind without
    importing the training workflow, the fine-tuning loop or the bot's trainer."""
    model = model_dir if kind == "frozen features" else finetuned_dir
    a, b = _images(model, tmp_path)
    loaded = loaded_after(CONSUMERS.format(model=str(model), a=str(a), b=str(b)))
    assert "thumbview.inference" in loaded and "thumbview.serve.app" in loaded
    assert not loaded & set(TRAINING_MODULES), sorted(loaded & set(TRAINING_MODULES))


# ----- the public API table ----------------------------------------------------------------
def api_table(design: Path = DESIGN) -> dict[str, tuple[list[str], list[str]]]:
    """{package: (its `__all__`, its modules)} from DESIGN.md's public API table."""
    section = design.read_text(encoding="utf-8").split("## Public API", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for name, exports, modules in re.findall(r"^\| `([\w.]+)` \|([^|]*)\|([^|]*)\|", section, re.M):
        rows[name] = (re.findall(r"`(\w+)`", exports), re.findall(r"`(\w+)`", modules))
    return rows


def test_design_lists_every_package_with_its_all_and_modules(layers):
    import importlib

    table = api_table()
    packages = sorted(f"thumbview.{p.parent.name}" for p in SRC.glob("*/__init__.py"))
    assert sorted(table) == packages
    for name in packages:
        package_dir = SRC / name.split(".")[1]
        modules = sorted(p.stem for p in package_dir.glob("*.py") if not p.stem.startswith("_"))
        exports, listed = table[name]
        assert sorted(importlib.import_module(name).__all__) == sorted(exports), name
        assert sorted(listed) == modules, (
            f"{name}: DESIGN.md lists {listed}, the package has {modules}"
        )
