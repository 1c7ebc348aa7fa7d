"""The one metrics-report schema: every ``metrics.json`` of this project is written and read here.

    write_metrics_report("outputs/csmcir/metrics.json", results, protocol=..., dataset="cirr", split="val",
                         model="outputs/csmcir", settings={"batch_size": 64})
    report = read_metrics_report("outputs/csmcir")        # -> EvaluationReport

The file::

    {"format": "metrics-report", "version": 1,
     "dataset": "cirr", "split": "val", "protocol": "cirr-rc2: ...", "model": ".",
     "metrics": {"recall_at_1": 41.2, ...},            # name -> number, nothing else
     "settings": {"batch_size": 64, ...},              # how the numbers were produced (not metrics)
     ...extra}                                         # writer-specific additions, e.g. submission file names

``model`` is a Hub id or a folder name relative to the report's folder (``"."`` when the report sits in the model's
folder), never an absolute local path: the writer converts local paths, so a report can be published with the model.
Absolute paths anywhere in ``settings`` or the extras are written relative to the report's folder or redacted
(``hub_cards.portable_paths``: ``"../data/cirr"``, ``"<local>/cirr"``).

:func:`parse_metrics` also reads a training run's ``{"before": {...}, "after": {...}}`` (``retrieval_metrics.json``:
the ``after`` numbers, those of the trained model), a ``Trainer`` evaluation (``trainer.evaluate()``, a ``log_history`` entry or
``eval_results.json``: ``{"eval_rouge2": 12.4, "eval_loss": 2.3, "eval_runtime": 1.2, "epoch": 3.0}``) and a flat
dict of metrics (``{"protocol": ..., "recall_at_1": 41.2}``). The ``eval_`` / ``test_`` prefix is dropped and
bookkeeping numbers (runtime, throughput, epoch, loss, decoding settings) are left out, as are lead-N baseline
scores (``lead12_rouge1``): a model card reports the model's quality metrics only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .atomic_files import write_json_atomically
from .portable_paths import redact_local_paths

logger = logging.get_logger(__name__)

REPORT_FORMAT = "metrics-report"
REPORT_VERSION = 1
REPORT_NAME = "metrics.json"
# A folder is searched for these, in order: the report, a Trainer's eval_results.json, then the before/after
# retrieval_metrics.json that earlier csmcir-train versions wrote.
REPORT_FILE_NAMES = (REPORT_NAME, "eval_results.json", "retrieval_metrics.json")
# A training run's report of the numbers before and after training: the card states the trained model's ("after").
BEFORE_AFTER_KEYS = ("before", "after")
METRIC_PREFIXES = ("eval_", "test_")
BOOKKEEPING_KEYS = frozenset(
    {"runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos", "loss",
     "model_preparation_time", "jit_compilation_time", "step", "num_products", "num_beams", "max_new_tokens"}
)
BASELINE_KEY = re.compile(r"^lead\d+_")
DESCRIPTIVE_KEYS = ("protocol", "dataset", "split")
SCHEMA_KEYS = frozenset({"format", "version", *DESCRIPTIVE_KEYS, "model", "metrics", "settings"})
# "name" or "owner/name", neither part starting with a dot (so "./x" and "../x" are local paths).
_HUB_ID = re.compile(r"^(?!\.)[\w.-]+(/(?!\.)[\w.-]+)?$")


@dataclass
class EvaluationReport:
    """Measured numbers and how they were measured.

    Attributes:
        values: metric name (no ``eval_`` prefix) → value, in the order the file lists them.
        protocol: the evaluation protocol that produced ``values`` (gallery, metric definitions), when recorded.
        dataset: the evaluated dataset's name, when recorded.
        split: the evaluated split, when recorded.
        model: the evaluated model (Hub id or folder name relative to the report), when recorded.
        settings: how the numbers were produced (batch size, decoding settings, ...), when recorded.
    """

    values: dict[str, float] = field(default_factory=dict)
    protocol: str | None = None
    dataset: str | None = None
    split: str | None = None
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _strip_prefix(key: str) -> str:
    for prefix in METRIC_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def parse_metrics(payload: Mapping[str, Any], source: str = "metrics") -> EvaluationReport:
    """Normalise a metrics report, a ``Trainer`` evaluation dict or a flat dict of metrics (module docstring).

    Numeric values (not bools, not NaN/inf) become metrics; ``protocol``/``dataset``/``split`` strings are kept;
    every other value (argument dicts, submission file lists) is ignored. Raises ``ValueError`` naming ``source``
    when ``payload`` is not a mapping, is a report of an unknown version, or holds no numeric metric.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"{source}: expected a JSON object of metrics, got {type(payload).__name__}")
    if payload.get("format") == REPORT_FORMAT and payload.get("version") != REPORT_VERSION:
        raise ValueError(f"{source}: metrics-report version {payload.get('version')!r}; this package reads version {REPORT_VERSION}")
    outer = payload
    inner = payload.get("metrics") if isinstance(payload.get("metrics"), Mapping) else payload
    if inner is payload and isinstance(payload.get("after"), Mapping) and not any(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in payload.values()):
        inner = payload["after"]   # {"before": {...}, "after": {...}} (retrieval_metrics.json): the trained model
    report = EvaluationReport()
    for key in DESCRIPTIVE_KEYS:
        # The inner (protocol function) value is the more specific one: e.g. FashionIQ's protocol names its categories.
        value = inner.get(key, outer.get(key))
        if isinstance(value, str) and value:
            setattr(report, key, value)
    if isinstance(outer.get("model"), str) and outer["model"]:
        report.model = outer["model"]
    if isinstance(outer.get("settings"), Mapping):
        report.settings = dict(outer["settings"])
    for raw_key, value in inner.items():
        if raw_key in DESCRIPTIVE_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = _strip_prefix(raw_key)
        if key in BOOKKEEPING_KEYS or BASELINE_KEY.match(key):
            continue
        if not math.isfinite(value):
            logger.warning(f"{source}: {raw_key} is {value}; left out of the card")
            continue
        if key in report.values:
            raise ValueError(f"{source}: metric {key!r} appears twice (with and without an eval_/test_ prefix)")
        report.values[key] = float(value)
    if not report.values:
        raise ValueError(f"{source}: no numeric metric found; keys present: {sorted(inner)}")
    return report


def _report_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        return path
    for name in REPORT_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{path}: expected a {' or '.join(REPORT_FILE_NAMES)} in this folder, found neither")


def read_metrics_report(path_or_folder: str | os.PathLike) -> EvaluationReport:
    """Read a ``metrics.json`` (or a Trainer's ``eval_results.json``, or a folder holding one) with :func:`parse_metrics`."""
    path = _report_file(path_or_folder)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"{path}: metrics file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return parse_metrics(payload, source=str(path))


def portable_model_name(model: str | os.PathLike, report_dir: str | os.PathLike) -> str:
    """``model`` as a report records it: a local folder becomes its path relative to ``report_dir`` when it lies
    there or below (``"."``, ``"checkpoint-500"``), otherwise its folder name; a Hub id is kept as it is."""
    name = os.fspath(model)
    if not (os.path.isabs(name) or os.path.exists(name) or not _HUB_ID.match(name)):
        return name  # a Hub id (or a name that is no local path)
    local = Path(name).resolve()
    try:
        return local.relative_to(Path(report_dir).resolve()).as_posix() or "."
    except ValueError:
        return local.name


def write_metrics_report(
    path: str | os.PathLike,
    metrics: Mapping[str, float | str],
    *,
    protocol: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    model: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    allow_empty: bool = False,
) -> Path:
    """Write a metrics report (the schema of the module docstring) atomically; returns the file's path.

    Args:
        path: the file, or an existing folder (the report is then ``<folder>/metrics.json``).
        metrics: metric name → number. A ``protocol`` / ``dataset`` / ``split`` string in it (a protocol function's
            result carries its protocol) is used when the keyword of that name is not given.
        protocol, dataset, split: how and on what the numbers were measured.
        model: the evaluated model: a Hub id, or a local folder (recorded relative to the report's folder, or by
            its name: never as an absolute path).
        settings: the evaluation's settings (batch size, decoding, ...); non-JSON values are written with ``str``.
        extra: further top-level keys (e.g. ``submission_files``); they may not replace a schema key.
        allow_empty: write a report without metrics (a test split whose targets are hidden: the report then
            records how its submission files were produced).

    Raises:
        ValueError: a metric that is not a number, an ``extra`` key that is a schema key, or no metric at all (unless
            ``allow_empty``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    described = {"protocol": protocol, "dataset": dataset, "split": split}
    values: dict[str, float | None] = {}
    for key, value in metrics.items():
        if key in DESCRIPTIVE_KEYS and isinstance(value, str):
            described[key] = described[key] or value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metrics[{key!r}]: expected a number, got {type(value).__name__} (settings go in settings=)")
        if not math.isfinite(value):
            logger.warning(f"{path}: metric {key} is {value}; written as null")
            value = None
        values[key] = value
    if not values and not allow_empty:
        raise ValueError(f"metrics: no metric to write into {path}")
    clashes = sorted(SCHEMA_KEYS & set(extra or {}))
    if clashes:
        raise ValueError(f"extra: {clashes} are keys of the metrics-report schema; pass them by name")
    payload = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, **described,
        "model": None if model is None else portable_model_name(model, path.parent),
        # Paths in the settings and extras are recorded relative to the report's folder or redacted (portable_paths).
        "metrics": values, "settings": redact_local_paths(dict(settings or {}), path.parent),
        **redact_local_paths(dict(extra or {}), path.parent),
    }
    return write_json_atomically(path, payload, default=str)


__all__ = [
    "REPORT_FORMAT", "REPORT_NAME", "REPORT_VERSION", "EvaluationReport", "parse_metrics", "portable_model_name",
    "read_metrics_report", "write_metrics_report",
]
