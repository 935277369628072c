"""The package's structure, read from its source: no import loop, a trial's record named only in
search/record.py and search/state/outcome.py, a search package in layers that import no higher one
(reading a study file imports no database code), free of typer, a command line that imports nothing heavy,
the report fed by the search package's exports, and a layout that the docs list as it is."""

from __future__ import annotations

import ast
import graphlib
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stl_tune"


def _sources(root: Path = PACKAGE) -> dict[str, ast.Module]:
    """{module name: its syntax tree} of every module under `root`, named as parts of stl_tune."""
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = ("stl_tune", *path.relative_to(root).with_suffix("").parts)
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(path.read_text())
    return sources


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The stl_tune modules a module imports, at any depth (inside functions and TYPE_CHECKING too):
    `from pkg import name` counts as pkg.name where that is a module, else as pkg."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module)
    return found


def _graph(sources: dict[str, ast.Module]) -> dict[str, set[str]]:
    graph = {name: _imports(tree, set(sources)) - {name} for name, tree in sources.items()}
    search = importlib.import_module("stl_tune.search")  # its lazy exports import their modules
    graph["stl_tune.search"] |= {search.module_of(name) for name in search._EXPORTS}
    return graph


def test_no_import_loop_in_the_package():
    graph = _graph(_sources())
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import loop: {' -> '.join(e.args[1])}")
    assert "stl_tune.search.record" in graph and not graph["stl_tune.search.record"]  # a leaf


# ------------------------------------------------------------------------------- the record
def _record_words() -> tuple[set[str], set[str]]:
    """(the attribute names that search/record.py defines, the status and fail-reason values that
    search/state/outcome.py defines)."""
    from stl_tune.search import record
    from stl_tune.search.state import outcome

    names = {v for k, v in vars(record).items() if k.endswith("_ATTR")} | set(record.RESULT_ATTRS)
    values = {*map(str, outcome.Status), *map(str, outcome.Reason), record.KNOWN_RECIPE}
    return names, values


def record_literals(sources: dict[str, ast.Module]) -> list[str]:
    """Where a module that imports the search package writes a record's attribute name or a status or
    fail reason as a literal: as a key (user_attrs[...], .get(...), a dict, set_user_attr), or as a
    value compared or stored."""
    names, values = _record_words()
    found = []
    for module, tree in sources.items():
        searching = any(m.startswith("stl_tune.search") for m in _imports(tree, set(sources)) | {module})
        if not searching or module in ("stl_tune.search.record", "stl_tune.search.state.outcome", "stl_tune.search"):
            continue  # the trainer's modules have a vocabulary of their own (TrainResult.status); the
            # package's keys are the names of the functions it exports

        def hit(node: ast.AST | None, words: set[str], where: str, module: str = module) -> None:
            if isinstance(node, ast.Constant) and node.value in words:
                found.append(f"{module}:{node.lineno}: {node.value!r} ({where})")
            elif isinstance(node, ast.Tuple | ast.List | ast.Set):
                for elt in node.elts:
                    hit(elt, words, where, module)

        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript):
                hit(node.slice, names, "key")
            elif isinstance(node, ast.Dict):
                for key in node.keys:
                    hit(key, names, "key")
            elif isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    hit(side, values, "compared")
                if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
                    hit(node.left, names, "key")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "get" and node.args:
                    hit(node.args[0], names, "key")
                if node.func.attr in ("set_user_attr", "set_trial_user_attr", "end"):
                    for arg in node.args:
                        hit(arg, names, "key")
                        hit(arg, values, "stored")
    return found


def test_a_trials_record_is_named_in_its_modules_only():
    assert record_literals(_sources()) == []


def test_the_record_check_finds_literals(tmp_path):
    """The check above against a module written the old way: every kind of use is found."""
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "__init__.py").write_text("")
    (tmp_path / "search" / "old.py").write_text(
        "from stl_tune.search import trials\n"
        "def f(trial, storage, t):\n"
        "    trial.set_user_attr('status', 'surplus')\n"
        "    storage.set_trial_user_attr(1, 'fail_reason', 'worker died')\n"
        "    prunable = 'enqueued' not in trial.user_attrs\n"
        "    curve = t.user_attrs.get('curve') or t.user_attrs['config']\n"
        "    study.enqueue_trial({}, user_attrs={'candidate': 3})\n"
        "    return t.user_attrs.get('x') in ('interrupted', 'time budget')\n"
    )
    found = record_literals(_sources(tmp_path))
    assert sorted(line.split(": ", 1)[1] for line in found) == sorted(
        [
            "'status' (key)",
            "'surplus' (stored)",
            "'fail_reason' (key)",
            "'worker died' (stored)",
            "'enqueued' (key)",
            "'curve' (key)",
            "'config' (key)",
            "'candidate' (key)",
            "'interrupted' (compared)",
            "'time budget' (compared)",
        ]
    )


# -------------------------------------------------------------------------------- the layers
# The search package's sub-packages, lowest first. The modules at its top (settings, record,
# optuna_compat, fmt) are below them all.
SEARCH_LAYERS = ("storage", "spec", "state", "views", "worker")


def _search_layer(module: str) -> int | None:
    """The layer of a module of the search package (0: its top), None outside it."""
    parts = module.split(".")
    if parts[:2] != ["stl_tune", "search"] or len(parts) == 2:
        return None
    return SEARCH_LAYERS.index(parts[2]) + 1 if parts[2] in SEARCH_LAYERS else 0


def test_a_search_layer_imports_no_higher_one():
    sources = _sources()
    for module, tree in sources.items():
        layer = _search_layer(module)
        if layer is None:
            continue
        imported = _imports(tree, set(sources))
        assert "stl_tune.search" not in imported, f"{module} imports the package's exports: name the module"
        for other in imported:
            other_layer = _search_layer(other)
            assert other_layer is None or other_layer <= layer, f"{module} imports {other}, a higher layer"


def test_the_layer_check_finds_an_upward_import(tmp_path):
    """The check above against a tree written the old way: a study file's module importing the
    worker loop is found."""
    for layer in ("spec", "worker"):
        (tmp_path / "search" / layer).mkdir(parents=True)
        (tmp_path / "search" / layer / "__init__.py").write_text("")
    (tmp_path / "search" / "__init__.py").write_text("")
    (tmp_path / "search" / "worker" / "workers.py").write_text("")
    (tmp_path / "search" / "spec" / "space.py").write_text("from stl_tune.search.worker import workers\n")
    sources = _sources(tmp_path)
    space = _imports(sources["stl_tune.search.spec.space"], set(sources))
    assert space == {"stl_tune.search.worker.workers"}
    assert _search_layer("stl_tune.search.worker.workers") > _search_layer("stl_tune.search.spec.space")


def test_reading_a_study_file_imports_no_database_code():
    probe = (
        "import sys; from stl_tune.search import load_study_file; load_study_file(sys.argv[1]); "
        "print(sorted({'sqlalchemy', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "studies" / "seed.yaml")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_search_package_is_free_of_typer():
    sources = _sources()
    for module, tree in sources.items():
        if module.startswith("stl_tune.search"):
            imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not imported & {"typer", "click"}, module


def test_the_command_line_imports_nothing_heavy_until_a_command_runs():
    probe = "import sys, stl_tune.cli; print(sorted({'optuna', 'sqlalchemy', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_search_commands_are_only_commands():
    """cli/search.py: each function a typer command, whose body calls into search/worker/session.py."""
    tree = _sources()["stl_tune.cli.search"]
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert {f.name for f in functions} == {"run", "worker", "confirm"}
    for f in functions:
        assert [ast.unparse(d) for d in f.decorator_list] == ["app.command()"], f.name
        assert f.body[-1].exc is not None and "session." in ast.unparse(f.body[-1]), (
            f.name
        )  # raise typer.Exit(session...)


def test_the_report_reads_what_the_search_package_exports():
    import stl_tune.search as search

    tree = _sources()["stl_tune.report"]
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("stl_tune.search")]
    assert {n.module for n in froms} == {"stl_tune.search", "stl_tune.search.record"}
    for n in froms:
        if n.module == "stl_tune.search":
            assert {a.name for a in n.names} <= set(search.__all__)


def test_every_export_is_its_modules_own():
    import stl_tune.search as search

    for name in search._EXPORTS:
        assert getattr(search, name) is getattr(importlib.import_module(search.module_of(name)), name)
        assert getattr(search, name).__module__ == search.module_of(name), name  # defined there, not imported
    with pytest.raises(AttributeError):
        search.no_such_name  # noqa: B018


def test_the_docs_list_the_tree():
    """README's layout names every top-level module and package; each package's docstring names
    each of its modules."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("\n## Layout\n") :]
    for path in sorted(PACKAGE.iterdir()):
        if path.suffix == ".py" and path.name != "__init__.py" or (path / "__init__.py").is_file():
            assert f"\n  {path.name}{'/' if path.is_dir() else ''} " in layout, f"README's layout: {path.name}"
    packages = ["cli", "data", "search", *(f"search/{layer}" for layer in SEARCH_LAYERS)]
    assert sorted(p.name for p in (PACKAGE / "search").iterdir() if (p / "__init__.py").is_file()) == sorted(
        SEARCH_LAYERS
    )
    for package in packages:
        doc = importlib.import_module(f"stl_tune.{package.replace('/', '.')}").__doc__
        for path in sorted((PACKAGE / package).iterdir()):
            if path.suffix == ".py" and path.name != "__init__.py":
                assert re.search(rf"\n    {path.stem}(\.py)? ", doc), f"stl_tune/{package}/__init__.py: {path.name}"
            elif (path / "__init__.py").is_file():
                assert re.search(rf"\n    {path.name}/ ", doc), f"stl_tune/{package}/__init__.py: {path.name}/"
