"""The architecture contracts (docs/contributing.md, 'Layout'): layers from the CLI down to the leaf modules, no
import cycles, the algorithms independent of the engines, the engines independent of each other.

The contracts are pyproject.toml's [tool.importlinter] section, checked by import-linter's
`lint-imports` (also `make contracts`); a broken one fails here with the offending import lines
named. import-linter's cycle contract compares the sibling modules of each package; the circle
test below also refuses a circle through a package's __init__ (which has no siblings), naming
every import line of the circle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter (and grimp) are test dependencies: make setup")

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(config: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).with_name("lint-imports")
    if not command.is_file():
        pytest.skip("lint-imports is not installed beside this Python (import-linter, a test dependency: make setup)")
    return subprocess.run(
        [str(command), "--no-cache", "--config", str(config)],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env},
    )


def test_import_contracts_are_kept():
    out = lint_imports(ROOT / "pyproject.toml", ROOT)
    report = out.stdout + out.stderr
    if out.returncode != 0:
        broken = report[report.find("Broken contracts"):] if "Broken contracts" in report else report
        pytest.fail(f"lint-imports: an architecture contract is broken (pyproject.toml [tool.importlinter]):\n{broken}", pytrace=False)
    assert "BROKEN" not in report and "KEPT" in report


def test_an_upward_import_fails_with_its_line_named(tmp_path):
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("X = 1\n")
    (package / "low.py").write_text("import os\n\n\ndef f():\n    from layered.high import X\n    return X\n")
    config = tmp_path / "contracts.toml"
    config.write_text(textwrap.dedent("""\
        [tool.importlinter]
        root_package = "layered"

        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        containers = ["layered"]
        layers = ["high", "low"]
    """))
    out = lint_imports(config, tmp_path, PYTHONPATH=str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "layered.low -> layered.high (l.5)" in out.stdout  # an import inside a function counts


def import_cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_a_circle():
    graph = grimp.build_graph("feddat", cache_dir=None)
    cycles = import_cycles(graph)
    lines = []
    for component in cycles:
        lines.append(f"circle of {len(component)} modules: {', '.join(component)}")
        members = set(component)
        for importer in component:
            for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
                for detail in graph.get_import_details(importer=importer, imported=imported):
                    lines.append(f"  {importer} (l.{detail['line_number']}) -> {imported}: {detail['line_contents']}")
    assert not cycles, "import circles inside feddat:\n" + "\n".join(lines)


def test_the_cycle_finder_finds_a_circle():
    class Graph:  # a -> b -> c -> a, and d -> a
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert import_cycles(Graph()) == [["a", "b", "c"]]


def test_a_backbone_is_the_encoder_the_data_layer_asks_for():
    # data/clients.py encodes through data.types.Encoder, so that the data do not import the
    # backbones above them; every backbone has its methods, with the same signatures.
    import inspect

    from feddat.backbones.base import Backbone
    from feddat.data.types import Encoder

    for name in ("cache_key", "encode_images", "tokenize"):
        assert inspect.signature(getattr(Backbone, name)) == inspect.signature(getattr(Encoder, name)), name
