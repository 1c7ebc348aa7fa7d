"""Test-server submission files for CIRR and CIRCO: build, validate against the official structure, write.

* CIRR (rc2 test1) is scored from **two** files: ``{"version": "rc2", "metric": "recall", pairid: [top 50]}``
  (the reference removed from each ranking) and ``{"version": "rc2", "metric": "recall_subset", pairid:
  [top 3]}`` (ranking restricted to the pair's ``img_set`` members minus the reference).
* CIRCO (test) takes ``{query_id: [50 unique image ids]}``; the server rejects duplicates.

Files are validated before anything is written and written atomically (temporary file + ``os.replace``),
so a failure never leaves a partial or half-updated pair of files behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

from hub_cards.atomic_files import write_json_atomically
from .cir_metrics import rank_gallery, subset_rankings


logger = logging.get_logger(__name__)

CIRR_VERSION = "rc2"
CIRR_RECALL_TOP_K = 50
CIRR_SUBSET_TOP_K = 3
CIRCO_TOP_K = 50


def _check_ranked_list(where: str, ids: Any, length: int) -> None:
    if not isinstance(ids, list):
        raise ValueError(f"{where}: expected a list of {length} image ids; got {type(ids).__name__}")
    if len(ids) != length:
        raise ValueError(f"{where}: expected {length} image ids; got {len(ids)}")
    if len(set(map(str, ids))) != len(ids):
        duplicates = sorted({str(x) for x in ids if list(map(str, ids)).count(str(x)) > 1})
        raise ValueError(f"{where}: duplicate image ids {duplicates[:5]}")


def validate_cirr_submission(
    submission: Mapping[str, Any],
    metric: str,
    expected_pair_ids: Sequence[str | int] | None = None,
) -> None:
    """Check one CIRR file: ``version == "rc2"``, ``metric`` in {recall, recall_subset}, every pair id
    (optionally exactly ``expected_pair_ids``) mapped to 50 (recall) or 3 (recall_subset) unique names."""
    if metric not in ("recall", "recall_subset"):
        raise ValueError(f"unknown CIRR metric {metric!r}; expected 'recall' or 'recall_subset'")
    if submission.get("version") != CIRR_VERSION:
        raise ValueError(f"CIRR submission 'version' must be {CIRR_VERSION!r}; got {submission.get('version')!r}")
    if submission.get("metric") != metric:
        raise ValueError(f"CIRR submission 'metric' must be {metric!r}; got {submission.get('metric')!r}")
    length = CIRR_RECALL_TOP_K if metric == "recall" else CIRR_SUBSET_TOP_K
    pairs = {k: v for k, v in submission.items() if k not in ("version", "metric")}
    if not pairs:
        raise ValueError("CIRR submission has no pair ids")
    for pair_id, ids in pairs.items():
        _check_ranked_list(f"CIRR {metric} pair {pair_id}", ids, length)
    if expected_pair_ids is not None:
        expected = {str(p) for p in expected_pair_ids}
        got = set(pairs)
        if expected != got:
            raise ValueError(
                f"CIRR {metric} submission pair ids differ from the split: missing {sorted(expected - got)[:5]}, "
                f"unexpected {sorted(got - expected)[:5]}"
            )


def validate_circo_submission(submission: Mapping[str, Any], expected_query_ids: Sequence[str | int] | None = None) -> None:
    """Check a CIRCO file: ``{query_id: [50 unique ids]}`` (optionally exactly ``expected_query_ids``)."""
    if not submission:
        raise ValueError("CIRCO submission has no query ids")
    for query_id, ids in submission.items():
        _check_ranked_list(f"CIRCO query {query_id}", ids, CIRCO_TOP_K)
    if expected_query_ids is not None:
        expected = {str(q) for q in expected_query_ids}
        got = {str(q) for q in submission}
        if expected != got:
            raise ValueError(
                f"CIRCO submission query ids differ from the split: missing {sorted(expected - got)[:5]}, "
                f"unexpected {sorted(got - expected)[:5]}"
            )


def build_cirr_submissions(
    scores,
    gallery_ids: Sequence[str],
    pair_ids: Sequence[str | int],
    reference_ids: Sequence[str],
    img_sets: Sequence[Sequence[str]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank (reference removed) and return the ``recall`` (top 50) and ``recall_subset`` (top 3) dicts."""
    rankings = rank_gallery(scores, gallery_ids, exclude_ids=reference_ids)
    subsets = subset_rankings(rankings, img_sets, reference_ids)
    recall: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall"}
    subset: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for pair_id, ranking, sub in zip(pair_ids, rankings, subsets):
        recall[str(pair_id)] = ranking[:CIRR_RECALL_TOP_K]
        subset[str(pair_id)] = sub[:CIRR_SUBSET_TOP_K]
    return recall, subset


def write_cirr_submissions(
    output_dir: str | os.PathLike,
    recall: Mapping[str, Any],
    recall_subset: Mapping[str, Any],
    prefix: str = "cirr_test1",
) -> tuple[Path, Path]:
    """Validate both CIRR files, then write ``{prefix}_recall.json`` and ``{prefix}_recall_subset.json``.

    Both are validated first (same pair ids in both), so an invalid submission writes neither file.
    """
    validate_cirr_submission(recall, "recall")
    pair_ids = [k for k in recall if k not in ("version", "metric")]
    validate_cirr_submission(recall_subset, "recall_subset", expected_pair_ids=pair_ids)
    output_dir = Path(output_dir)
    recall_path = write_json_atomically(output_dir / f"{prefix}_recall.json", dict(recall))
    subset_path = write_json_atomically(output_dir / f"{prefix}_recall_subset.json", dict(recall_subset))
    logger.info(f"wrote CIRR submission files {recall_path} and {subset_path} ({len(pair_ids)} pairs)")
    return recall_path, subset_path


def build_circo_submission(scores, gallery_ids: Sequence[str], query_ids: Sequence[str | int]) -> dict[str, list[str]]:
    """Rank the gallery and keep the top 50 unique ids per query (gallery ids are unique by construction)."""
    if len(set(map(str, gallery_ids))) != len(gallery_ids):
        raise ValueError("gallery_ids contain duplicates; CIRCO rankings must be unique ids")
    if len(gallery_ids) < CIRCO_TOP_K:
        raise ValueError(f"CIRCO submissions need at least {CIRCO_TOP_K} gallery images; got {len(gallery_ids)}")
    rankings = rank_gallery(scores, gallery_ids, top_k=CIRCO_TOP_K)
    return {str(q): ranking for q, ranking in zip(query_ids, rankings)}


def write_circo_submission(output_dir: str | os.PathLike, submission: Mapping[str, Any], name: str = "circo_test.json") -> Path:
    """Validate then atomically write a CIRCO submission file; an invalid one writes nothing."""
    validate_circo_submission(submission)
    path = write_json_atomically(Path(output_dir) / name, dict(submission))
    logger.info(f"wrote CIRCO submission {path} ({len(submission)} queries)")
    return path
