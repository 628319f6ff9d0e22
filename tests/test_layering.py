"""The layering rule of ARCHITECTURE.md §2, enforced on the source tree.

core imports nothing from patchd outside core; adapters (backends, solver,
snapshot, store) import only core and themselves; daemon wires everything;
cli, notify and bridge reach the daemon over D-Bus only, so they import
core and themselves, never daemon, store or an adapter.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "patchd"
ADAPTERS = {"backends", "solver", "snapshot", "store"}
CLIENTS = {"cli", "notify", "bridge"}
LAYERS = {"core"} | ADAPTERS | CLIENTS | {"daemon"}


def allowed(layer: str) -> set:
    if layer == "core":
        return {"core"}
    if layer in ADAPTERS or layer in CLIENTS:
        return {"core", layer}
    if layer == "daemon":
        return {"core", "daemon"} | ADAPTERS
    raise AssertionError(layer)


def patchd_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ["{}.{}".format(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError("{}:{}: use absolute imports".format(path, node.lineno))
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "patchd" and len(parts) > 1 and parts[1] in LAYERS:
                yield node.lineno, parts[1]


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_layer_exists():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == LAYERS


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_layers(path):
    layer = path.relative_to(PACKAGE).parts[0]
    bad = ["line {}: imports patchd.{}".format(line, target)
           for line, target in patchd_imports(path) if target not in allowed(layer)]
    assert not bad, "{} (layer {}) breaks the layering rule: {}".format(path, layer, bad)


def test_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from patchd.daemon import runner\nimport patchd.store.journal\n")
    assert [t for _, t in patchd_imports(bad)] == ["daemon", "daemon", "store"]
