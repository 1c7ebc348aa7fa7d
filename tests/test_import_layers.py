"""The layering rules of the repository, checked on every import statement (lazy ones inside functions included).

Layers, bottom up: Hub files (each model package's configuration_/modeling_/processing_ trio, and pipelines/) →
hub_cards → each model package's library code → its cli/ → examples/ and benchmarks/. A module may import its
own layer and the layers below; the two model packages never import each other; pipelines/ imports no model
package and no hub_cards; hub_cards imports no other project package; Hub files import only their siblings, in
the one form ``save_pretrained`` follows (``from .x import y``). Importing a model package registers its Auto
classes without importing datasets, the Trainer, pipelines or hub_cards.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_PACKAGES = ("modeling_csmcir", "modeling_mmaps")
PROJECT_PACKAGES = (*MODEL_PACKAGES, "pipelines", "hub_cards", "examples", "benchmarks")
HUB_FILES = {"modeling_csmcir.preprocessing_csmcir"} | {
    f"{package}.{kind}_{package.removeprefix('modeling_')}" for package in MODEL_PACKAGES
    for kind in ("configuration", "modeling", "processing")
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, ast.stmt]]:
    """(line, absolute module name, node) of every import in the file, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target, node))
    return found


def _project_files() -> list[Path]:
    files = []
    for package in PROJECT_PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def _layer(module: str) -> tuple[str, str | None]:
    """(layer, model package or None) of a project module name."""
    top = module.split(".")[0]
    if module in HUB_FILES or top == "pipelines":
        return "hub", top if top in MODEL_PACKAGES else None
    if top == "hub_cards":
        return "hub_cards", None
    if top in MODEL_PACKAGES:
        return ("cli" if module.split(".")[1:2] == ["cli"] else "library"), top
    return "application", None


RANK = {"hub": 0, "hub_cards": 1, "library": 2, "cli": 3, "application": 4}


def _violations(path: Path) -> list[str]:
    source = _module_name(path)
    source_layer, source_package = _layer(source)
    problems = []
    for line, target, node in _imports(path):
        top = target.split(".")[0]
        if top not in PROJECT_PACKAGES:
            continue
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        if source_layer == "application":
            continue
        if top in ("examples", "benchmarks"):
            problems.append(f"{where}: nothing below examples/benchmarks may import them")
            continue
        if target == top and top in MODEL_PACKAGES and source_package == top:
            # `from modeling_x import y` inside the package itself goes through the lazy __init__: a hidden cycle.
            problems.append(f"{where}: import the defining module, not the package's own __init__")
            continue
        target_layer, target_package = _layer(target)
        if source_package and target_package and source_package != target_package:
            problems.append(f"{where}: the two model packages never import each other")
        elif source.startswith("pipelines") and target_layer != "hub":
            problems.append(f"{where}: pipelines/ imports no model package and no hub_cards")
        elif source.startswith("pipelines") and target_package is not None:
            problems.append(f"{where}: pipelines/ imports no model package")
        elif RANK[target_layer] > RANK[source_layer]:
            problems.append(f"{where}: a {source_layer} module imports the higher {target_layer} layer")
        elif source in HUB_FILES or source.startswith("pipelines."):
            sibling = isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and "." not in node.module
            if not sibling:
                problems.append(f"{where}: a Hub file imports only siblings, as `from .x import y`")
    return problems


def test_every_import_respects_the_layers():
    problems = [problem for path in _project_files() for problem in _violations(path)]
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_the_layer_check_catches_upward_cross_model_and_non_sibling_imports(tmp_path, monkeypatch):
    # The checker itself: each of these files must be reported.
    cases = {
        "modeling_csmcir/evaluation/bad_upward.py": "from ..cli.train import main\n",
        "modeling_mmaps/data/bad_cross.py": "from modeling_csmcir.memory_bank import MemoryBank\n",
        "hub_cards/bad_model.py": "def f():\n    from modeling_mmaps.presets import preset_config\n",
        "pipelines/bad_card.py": "import hub_cards\n",
        "modeling_csmcir/modeling_csmcir_bad.py": "",
    }
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for relative, code in cases.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    flagged = {relative for relative in cases if code_has_problem(tmp_path / relative)}
    assert flagged == set(cases) - {"modeling_csmcir/modeling_csmcir_bad.py"}
    hub = tmp_path / "modeling_csmcir" / "modeling_csmcir.py"
    hub.write_text("from .data.collators import CIRCollator\n")
    assert code_has_problem(hub)


def code_has_problem(path: Path) -> bool:
    return bool(_violations(path))


@pytest.mark.parametrize("package", MODEL_PACKAGES)
def test_importing_a_model_package_registers_it_and_loads_nothing_heavy(package):
    code = (
        f"import sys, json; import {package}; from transformers import AutoConfig; "
        f"AutoConfig.for_model({package!r}.removeprefix('modeling_')); "
        "print(json.dumps([m for m in ('datasets', 'transformers.trainer', 'pipelines', 'hub_cards') if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_console_script_help_imports_no_data_trainer_or_pipeline_stack():
    # `--help` must answer at the cost of importing the package (the Hub files), not of datasets or the Trainer:
    # every script's --help runs in one fresh process, and nothing heavy may be loaded afterwards.
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    modules = sorted({target.partition(":")[0] for target in scripts.values()})
    code = (
        "import contextlib, importlib, io, json, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        module.main(['--help'])\n"
        "print(json.dumps([m for m in ('datasets', 'transformers.trainer', 'pipelines') if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
