"""Read evaluation results (``metrics.json`` and friends) into one normalised form for the model cards.

Three layouts are accepted, because three writers in this package produce them:

* ``csmcir-eval`` (:mod:`modeling_csmcir.cir_eval_cli`)::

      {"dataset": "cirr", "split": "val", "model": ..., "metrics": {"recall_at_1": 41.2, ..., "protocol": "cirr-rc2: ..."},
       "arguments": {...}}

* a flat dict, e.g. a protocol function's result (:func:`modeling_csmcir.cir_metrics.cirr_metrics`) saved as is::

      {"protocol": "...", "recall_at_1": 41.2, "recall_at_5": 77.0, ...}

* a ``Trainer`` evaluation (``eval_results.json`` of ``mmaps-train``, ``trainer.evaluate()``)::

      {"eval_rouge1": 30.1, "eval_rouge2": 12.4, "eval_loss": 2.3, "eval_runtime": 1.2, "epoch": 3.0}

  The ``eval_`` / ``test_`` prefix is dropped and bookkeeping numbers (runtime, throughput, epoch, loss) are left
  out: a model card reports quality metrics, and the loss is the training objective, not one of them.

``mmaps-eval`` (:mod:`modeling_mmaps.eval_cli`) writes the flat layout plus its decoding settings (``num_beams``,
``max_new_tokens``, ``num_products``) and a lead-N baseline (``lead{N}_rouge1`` ...): settings are not metrics
and a baseline's score is not the model's, so both stay out of the report.
"""

from __future__ import annotations

import json
import math
import re
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

METRIC_PREFIXES = ("eval_", "test_")
BOOKKEEPING_KEYS = frozenset(
    {"runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos", "loss",
     "model_preparation_time", "jit_compilation_time", "step", "num_products", "num_beams", "max_new_tokens"}
)
BASELINE_KEY = re.compile(r"^lead\d+_")
DESCRIPTIVE_KEYS = ("protocol", "dataset", "split")


@dataclass
class EvaluationReport:
    """Measured numbers and how they were measured.

    Attributes:
        values: metric name (no ``eval_`` prefix) → value, in the order the file lists them.
        protocol: the evaluation protocol that produced ``values`` (gallery, metric definitions), when recorded.
        dataset: the evaluated dataset's name, when recorded.
        split: the evaluated split, when recorded.
    """

    values: dict[str, float] = field(default_factory=dict)
    protocol: str | None = None
    dataset: str | None = None
    split: str | None = None


def _strip_prefix(key: str) -> str:
    for prefix in METRIC_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def parse_metrics(payload: Mapping[str, Any], source: str = "metrics") -> EvaluationReport:
    """Normalise one of the layouts described in the module docstring into an :class:`EvaluationReport`.

    Numeric values (not bools, not NaN/inf) become metrics; ``protocol``/``dataset``/``split`` strings are kept;
    every other value (argument dicts, submission file lists, the model path) is ignored.
    Raises ``ValueError`` naming ``source`` when ``payload`` is not a mapping or holds no numeric metric.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"{source}: expected a JSON object of metrics, got {type(payload).__name__}")
    outer = payload
    inner = payload.get("metrics") if isinstance(payload.get("metrics"), Mapping) else payload
    report = EvaluationReport()
    for key in DESCRIPTIVE_KEYS:
        # The inner (protocol function) value is the more specific one: e.g. FashionIQ's protocol names its categories.
        value = inner.get(key, outer.get(key))
        if isinstance(value, str) and value:
            setattr(report, key, value)
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


def read_metrics_file(path: str | os.PathLike) -> EvaluationReport:
    """Read ``metrics.json`` (or ``eval_results.json``, or a folder holding one of them) with :func:`parse_metrics`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        candidates = [os.path.join(path, name) for name in ("metrics.json", "eval_results.json")]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            raise ValueError(f"{path}: expected a metrics.json or eval_results.json in this folder, found neither")
        path = found[0]
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except FileNotFoundError as err:
        raise ValueError(f"{path}: metrics file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return parse_metrics(payload, source=path)


__all__ = ["EvaluationReport", "parse_metrics", "read_metrics_file"]
