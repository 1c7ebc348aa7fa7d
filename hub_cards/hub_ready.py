"""Is a saved model folder uploadable to the Hub as it is? One check, used by the tests of every CLI and the demo.

    problems = hub_ready_problems("outputs/csmcir-tiny-synthetic")   # [] when `hf upload user/name <folder>` is enough
    for line in problems: print(line)                                 # each names the file and what is wrong

What "as it is" means here (what someone loading the repository with ``trust_remote_code=True`` needs, and what
must not be published):

* **weights**: ``model.safetensors`` (or a ``model.safetensors.index.json`` whose shards are all there);
* **no pickle**: no ``*.bin`` / ``*.pkl`` / ``*.pickle`` / ``*.pt`` / ``*.pth`` / ``*.ckpt`` file and no file
  starting with a pickle header, anywhere below the folder — Trainer ``checkpoint-*`` folders (optimizer state,
  RNG state) included, so a folder with checkpoints is named as not uploadable as is;
* **config**: ``config.json`` with a ``model_type`` and an ``auto_map`` whose every class file is in the folder;
* **remote code**: every ``*.py`` imports only siblings that are present (``from .x import y`` → ``x.py``);
* **processor**: ``processor_config.json`` or ``preprocessor_config.json``, a tokenizer (``tokenizer.json`` or
  ``tokenizer_config.json`` + vocabulary), and the file of the processor's own ``auto_map``;
* **pipeline**: for every task of ``config.json``'s ``custom_pipelines``, its ``impl`` file;
* **card**: ``README.md`` whose YAML header has ``library_name``, ``pipeline_tag`` and a ``model-index`` with at
  least one numeric result; when the folder holds a metrics report (``metrics.json``, else ``eval_results.json``) the
  card's numbers for that report's split are the report's (a stale card is named); a ``## Training`` section
  listing the settings;
* **no absolute local path** in any text file (every file that decodes as UTF-8): ``/home/...``, ``/tmp/...``,
  ``C:\\...`` and any path whose first component is a top-level folder of this machine (``#!`` lines excepted). The
  project's writers record paths relative to the saved folder or redacted (``hub_cards.portable_paths``).
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .metrics_report import REPORT_FILE_NAMES

PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npy_pickle")
# A pickle starts with PROTO (0x80) and a protocol number 2..5; torch.save's zip archives hold a data.pkl.
_PICKLE_HEADER = re.compile(rb"^\x80[\x02-\x05]")
WEIGHTS_NAME, WEIGHTS_INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
CARD_NAME = "README.md"
# Text files larger than this are not scanned for paths (a tokenizer.json is ~1 MB; weights are not text anyway).
MAX_SCANNED_TEXT_BYTES = 32 * 1024 * 1024
_WINDOWS_PATH = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\\\s\"']+\\)*[^\\\s\"']*")
# An absolute POSIX path of two or more components, not part of a URL ("https://x/y") or a relative path ("a/b").
_POSIX_PATH = re.compile(r"(?<![\w.:/~%$-])/([A-Za-z0-9_.+-]+)(?:/[A-Za-z0-9_.+@-]+)+")
# Top-level folders that hold local user data on common systems, flagged even when absent from this machine.
_LOCAL_ROOTS = frozenset({"home", "Users", "root", "tmp", "var", "mnt", "media", "private", "scratch", "work", "data",
                          "workspace", "content", "opt", "srv", "net", "gpfs", "lustre", "nfs"})


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    if _PICKLE_HEADER.match(head):
        return True
    if head == b"PK\x03\x04":  # a zip: torch.save's format holds */data.pkl
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _read_json(path: Path, folder: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{_relative(path, folder)}: not readable JSON ({err})")
        return None


def _class_file(reference: str) -> str | None:
    """``"module.Class"`` → ``"module.py"``; a reference into another repository (``"repo--module.Class"``) → None."""
    if "--" in reference:
        return None
    return reference.rsplit(".", 1)[0].replace(".", "/") + ".py"


def _auto_map_files(auto_map: Any) -> list[str]:
    files = []
    for value in (auto_map or {}).values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and _class_file(reference):
                files.append(_class_file(reference))
    return files


def local_path_prefixes() -> frozenset[str]:
    """First components of absolute paths that are local to a machine: this machine's top-level folders that are
    not system folders every machine has (``/usr``, ``/bin``, ``/etc``, ``/dev``, ``/proc``...) plus
    ``_LOCAL_ROOTS``."""
    system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "sys", "run", "boot"}
    try:
        present = {entry.name for entry in os.scandir("/") if entry.is_dir()}
    except OSError:
        present = set()
    return frozenset((present - system) | _LOCAL_ROOTS)


def find_absolute_paths(text: str, prefixes: frozenset[str] | None = None) -> list[str]:
    """Absolute local paths in ``text`` (see the module docstring), in order of appearance; ``#!`` lines skipped."""
    prefixes = local_path_prefixes() if prefixes is None else prefixes
    found = []
    for line in text.splitlines():
        if line.startswith("#!"):
            continue
        found += [m.group(0) for m in _POSIX_PATH.finditer(line) if m.group(1) in prefixes]
        found += [m.group(0) for m in _WINDOWS_PATH.finditer(line)]
    return found


def _check_sibling_imports(path: Path, folder: Path, problems: list[str]) -> None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError) as err:
        problems.append(f"{_relative(path, folder)}: not valid Python ({err})")
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level > 1 or not node.module:
                problems.append(f"{_relative(path, folder)}:{node.lineno}: import of the form "
                                f"'from {'.' * node.level}{node.module or ''} import ...' (save_pretrained copies "
                                "only siblings imported as 'from .x import y')")
            elif not (path.parent / f"{node.module.replace('.', '/')}.py").is_file():
                problems.append(f"{_relative(path, folder)}:{node.lineno}: imports '.{node.module}' but "
                                f"{node.module}.py is not in the folder")


def _check_card(folder: Path, problems: list[str]) -> None:
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        problems.append(f"{CARD_NAME}: missing (no model card: write one with hub_cards.write_csmcir_card / "
                        "write_mmaps_card after an evaluation)")
        return
    from huggingface_hub import ModelCard

    text = card_path.read_text(encoding="utf-8")
    try:
        metadata = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except Exception as err:  # noqa: BLE001 - any parse failure is reported, naming the file
        problems.append(f"{CARD_NAME}: YAML header not readable ({err})")
        return
    for key in ("library_name", "pipeline_tag"):
        if not metadata.get(key):
            problems.append(f"{CARD_NAME}: YAML header has no {key}")
    card_values: dict[str | None, dict[str, float]] = {}   # split -> metric type -> value
    for model in metadata.get("model-index") or []:
        for result in model.get("results") or []:
            split = (result.get("dataset") or {}).get("split")
            for metric in result.get("metrics") or []:
                value = metric.get("value")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    card_values.setdefault(split, {})[str(metric.get("type"))] = float(value)
    if not card_values:
        problems.append(f"{CARD_NAME}: no model-index with a measured number (evaluate the model, then write the card)")
    for report_path in (folder / n for n in REPORT_FILE_NAMES if (folder / n).is_file()):
        # A report is compared with the card's results of the same split: a card may state the dev numbers while
        # metrics.json holds a later test evaluation.
        payload = _read_json(report_path, folder, problems)
        if not isinstance(payload, dict):
            continue
        measured = payload.get("metrics") if isinstance(payload.get("metrics"), dict) else (
            payload.get("after") if isinstance(payload.get("after"), dict) else payload)
        stated = card_values.get(payload.get("split")) or (
            next(iter(card_values.values())) if len(card_values) == 1 and payload.get("split") is None else {})
        for key, value in measured.items():
            name = key.removeprefix("eval_")
            if name in stated and isinstance(value, (int, float)) and not math.isclose(
                    stated[name], float(value), rel_tol=1e-9, abs_tol=1e-12):
                problems.append(f"{CARD_NAME}: model-index {name} = {stated[name]} but {report_path.name} says "
                                f"{value} (the card is stale: rewrite it from {report_path.name})")
    training = re.search(r"^## Training\s*$(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if training is None or not re.search(r"^\| `[^`]+` \|", training.group(1), flags=re.MULTILINE):
        problems.append(f"{CARD_NAME}: no training settings (a '## Training' section with a settings table; the "
                        "card reads them from training_args.json)")


def hub_ready_problems(folder: str | os.PathLike) -> list[str]:
    """Everything that keeps ``folder`` from being uploaded to the Hub as it is (module docstring); ``[]`` when none.

    Each problem is one line starting with the file it concerns (relative to ``folder``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{os.fspath(folder)}: not a folder"]
    problems: list[str] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    # Weights, and nothing pickled anywhere (checkpoint folders included).
    if (folder / WEIGHTS_INDEX_NAME).is_file():
        index = _read_json(folder / WEIGHTS_INDEX_NAME, folder, problems) or {}
        for shard in sorted(set((index.get("weight_map") or {}).values())):
            if not (folder / shard).is_file():
                problems.append(f"{WEIGHTS_INDEX_NAME}: shard {shard} is missing")
    elif not (folder / WEIGHTS_NAME).is_file():
        problems.append(f"{WEIGHTS_NAME}: missing (no safetensors weights)")
    checkpoints = sorted({p.relative_to(folder).parts[0] for p in files
                          if len(p.relative_to(folder).parts) > 1 and p.relative_to(folder).parts[0].startswith("checkpoint-")})
    for checkpoint in checkpoints:
        problems.append(f"{checkpoint}/: a Trainer checkpoint (optimizer and RNG state are pickles); delete it or "
                        f"upload with --exclude '{checkpoint}/*'")
    for path in files:
        if path.relative_to(folder).parts[0] in checkpoints:
            continue
        if _is_pickle(path):
            problems.append(f"{_relative(path, folder)}: a pickle (unsafe to load, may hold credentials); "
                            "publish safetensors / JSON only")

    # Config, remote code, processor, pipelines.
    config = _read_json(folder / "config.json", folder, problems) if (folder / "config.json").is_file() else None
    if not (folder / "config.json").is_file():
        problems.append("config.json: missing")
    if isinstance(config, dict):
        if not config.get("model_type"):
            problems.append("config.json: no model_type")
        if not config.get("auto_map"):
            problems.append("config.json: no auto_map (the model does not load with trust_remote_code from the Hub)")
        for name in _auto_map_files(config.get("auto_map")):
            if not (folder / name).is_file():
                problems.append(f"config.json: auto_map names {name}, which is not in the folder")
        for task, pipeline in (config.get("custom_pipelines") or {}).items():
            impl = pipeline.get("impl") if isinstance(pipeline, dict) else None
            name = _class_file(impl) if isinstance(impl, str) else None
            if not impl:
                problems.append(f"config.json: custom_pipelines[{task!r}] has no impl")
            elif name and not (folder / name).is_file():
                problems.append(f"config.json: custom_pipelines[{task!r}] names {name}, which is not in the folder")
    for path in files:
        if path.suffix == ".py" and path.parent == folder:
            _check_sibling_imports(path, folder, problems)
    processor_files = [n for n in ("processor_config.json", "preprocessor_config.json") if (folder / n).is_file()]
    if not processor_files:
        problems.append("processor_config.json: missing (nor preprocessor_config.json): no processor saved")
    for name in processor_files:
        payload = _read_json(folder / name, folder, problems)
        for code in _auto_map_files(payload.get("auto_map") if isinstance(payload, dict) else None):
            if not (folder / code).is_file():
                problems.append(f"{name}: auto_map names {code}, which is not in the folder")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        problems.append("tokenizer.json: missing (nor tokenizer_config.json): no tokenizer saved")

    _check_card(folder, problems)

    # No absolute local path in any text file.
    prefixes = local_path_prefixes()
    for path in files:
        if path.suffix in (".safetensors",) or path.stat().st_size > MAX_SCANNED_TEXT_BYTES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found = find_absolute_paths(text, prefixes)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            problems.append(f"{_relative(path, folder)}: absolute local path {found[0]!r}{more}; record paths "
                            "relative to the folder or redacted (hub_cards.portable_paths)")
    return problems


__all__ = ["find_absolute_paths", "hub_ready_problems", "local_path_prefixes"]
