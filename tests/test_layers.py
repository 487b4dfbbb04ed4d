"""The layers of msfer point one way: data -> faces -> regions -> model -> engine -> inference -> cli.

Every import in the package is read from its source with ``ast`` (imports inside functions
included, since those hide cycles from Python itself) and none may reach a higher layer.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "msfer"

# Lowest first. The base modules hold what every layer shares (names, errors, the version, value
# checks, safe output files, the bundled files' paths); the package root is the public facade, so
# it counts as the top.
LAYERS = ["base", "data", "faces", "regions", "model", "engine", "inference", "cli"]
LAYER_OF = {
    "msfer._version": "base", "msfer.errors": "base", "msfer.labels": "base", "msfer.weights": "base",
    "msfer.samples": "base", "msfer.outputs": "base", "msfer.files": "base", "msfer.values": "base",
    "msfer.data": "data", "msfer.faces": "faces", "msfer.regions": "regions", "msfer.model": "model",
    "msfer.engine": "engine", "msfer.inference": "inference", "msfer.cli": "cli", "msfer": "cli",
    "msfer.studies": "cli",  # the study scripts' library: it composes training and inference
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a module: that of its longest listed prefix (``msfer`` itself only when nothing longer is)."""
    prefixes = [name for name in LAYER_OF if module == name or module.startswith(name + ".")]
    return LAYER_OF[max(prefixes, key=len)]


def imported_modules(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every msfer module that ``module`` imports, anywhere in its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                # `from .. import name` imports the submodule `name` if there is one, else an attribute of the package
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else base))
    return [(line, name) for line, name in found if name == "msfer" or name.startswith("msfer.")]


def test_every_module_has_a_layer():
    assert "msfer.engine.trainer" in MODULES and "msfer.inference.recognizer" in MODULES  # the walk found the package
    for module in MODULES:
        assert any(module == name or module.startswith(name + ".") for name in LAYER_OF if name != "msfer") \
            or module == "msfer", f"{module} belongs to no layer: add it to LAYER_OF"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = LAYERS.index(layer(module))
    upward = [f"line {line}: {name} ({layer(name)})" for line, name in imported_modules(module, MODULES[module])
              if LAYERS.index(layer(name)) > own]
    assert not upward, f"{module} ({layer(module)}) imports from a higher layer: " + "; ".join(upward)


def test_the_check_sees_imports_inside_functions(tmp_path):
    # The old engine.evaluate imported inference inside a function: exactly what the test must catch.
    source = tmp_path / "probe.py"
    source.write_text("def run():\n    from ..inference.detect_eval import evaluate_with_detection\n"
                      "    from .. import __version__\n")
    found = imported_modules("msfer.engine.probe", source)
    assert found == [(2, "msfer.inference.detect_eval"), (3, "msfer")]
    assert [layer(name) for _, name in found] == ["inference", "cli"]  # both above the engine


def test_only_the_command_line_parses_arguments():
    # The library is called with values; turning options into them is the job of msfer.cli alone.
    parsing = [module for module, path in MODULES.items() if layer(module) != "cli" or module == "msfer"
               if any(isinstance(node, (ast.Import, ast.ImportFrom))
                      and "argparse" in ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                                         else [node.module])
                      for node in ast.walk(ast.parse(path.read_text(), str(path))))]
    assert not parsing, f"argparse imported outside msfer.cli: {parsing}"


# Names every command module defines (the command protocol), and module loggers.
SHARED_NAMES = {"add_arguments", "run", "log"}


def public_definitions(path: Path) -> set[str]:
    """The public names a module defines at its top level (functions, classes, assigned names)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_") and name not in SHARED_NAMES}


def test_no_two_modules_define_the_same_public_name():
    homes: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        for name in public_definitions(path):
            homes.setdefault(name, []).append(module)
    twice = {name: modules for name, modules in homes.items() if len(modules) > 1}
    assert not twice, f"one thing, one home: {twice}"


ROOT = PACKAGE.parents[1]


SCRIPT_FOLDERS = ("scripts", "benchmarks", "tools")


@pytest.mark.parametrize("script", sorted(p.relative_to(ROOT).as_posix() for folder in SCRIPT_FOLDERS
                                          for p in (ROOT / folder).glob("*.py")))
def test_scripts_import_msfer_as_installed(script):
    # Run from an environment where msfer is installed; a script that edits sys.path or imports another
    # script runs only from where it happens to lie.
    tree = ast.parse((ROOT / script).read_text())
    edits = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
             and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not edits, f"{script} touches sys.path (lines {edits})"
    siblings = {p.stem for folder in SCRIPT_FOLDERS for p in (ROOT / folder).glob("*.py")}
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert not imported & siblings, f"{script} imports another script: {sorted(imported & siblings)}"


def test_every_config_key_has_a_kind_and_a_doc():
    from msfer.engine.config import KEYS, KINDS

    assert len({key.name for key in KEYS}) == len(KEYS)
    for key in KEYS:
        assert key.kind in KINDS, f"{key.name}: kind {key.kind!r} is not one of {KINDS}"
        assert key.doc and "\n" not in key.doc, f"{key.name} needs a one-line doc"
        assert (key.allowed is not None) == (key.kind in ("number", "pair", "choice")), \
            f"{key.name}: a {key.kind} key {'needs' if key.kind in ('number', 'pair', 'choice') else 'has no'} allowed"
