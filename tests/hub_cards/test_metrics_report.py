"""The one metrics-report schema: what ``write_metrics_report`` writes, ``read_metrics_report`` reads back, and no
report records an absolute local path."""

from __future__ import annotations

import json

import pytest

from hub_cards.metrics_report import (
    REPORT_FORMAT,
    REPORT_VERSION,
    parse_metrics,
    portable_model_name,
    read_metrics_report,
    write_metrics_report,
)


def test_a_written_report_reads_back_with_the_same_numbers_and_descriptions(tmp_path):
    path = write_metrics_report(
        tmp_path / "metrics.json", {"recall_at_1": 41.25, "recall_at_5": 77, "protocol": "cirr-rc2: reference removed"},
        dataset="cirr", split="val", model=tmp_path, settings={"batch_size": 64, "device": tmp_path.name},
        extra={"submission_files": ["cirr_test1_recall.json"]},
    )
    assert path == tmp_path / "metrics.json"
    payload = json.loads(path.read_text())
    assert payload == {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "protocol": "cirr-rc2: reference removed", "dataset": "cirr",
        "split": "val", "model": ".", "metrics": {"recall_at_1": 41.25, "recall_at_5": 77},
        "settings": {"batch_size": 64, "device": tmp_path.name}, "submission_files": ["cirr_test1_recall.json"],
    }
    report = read_metrics_report(tmp_path)  # a folder finds its metrics.json
    assert report.values == {"recall_at_1": 41.25, "recall_at_5": 77.0}
    assert (report.protocol, report.dataset, report.split, report.model) == ("cirr-rc2: reference removed", "cirr", "val", ".")
    assert report.settings == {"batch_size": 64, "device": tmp_path.name}


def test_an_explicit_protocol_wins_over_the_one_in_the_metrics(tmp_path):
    write_metrics_report(tmp_path / "m.json", {"rouge2": 12.0, "protocol": "from the function"}, protocol="CEPSUM")
    assert read_metrics_report(tmp_path / "m.json").protocol == "CEPSUM"


def test_the_report_never_records_an_absolute_local_path(tmp_path):
    model_dir = tmp_path / "outputs" / "csmcir"
    (model_dir / "checkpoint-500").mkdir(parents=True)
    other = tmp_path / "elsewhere" / "mmaps-tiny"
    other.mkdir(parents=True)
    cases = {
        model_dir: ".",  # the report sits in the model's folder
        model_dir / "checkpoint-500": "checkpoint-500",  # below it: relative
        other: "mmaps-tiny",  # outside it: the folder's name
        "Salesforce/blip2-itm-vit-g": "Salesforce/blip2-itm-vit-g",  # a Hub id stays
        "/no/such/folder/model": "model",
    }
    for model, expected in cases.items():
        path = write_metrics_report(model_dir / "metrics.json", {"recall_at_1": 1.0}, model=model)
        assert json.loads(path.read_text())["model"] == expected
        assert str(tmp_path) not in path.read_text()
    assert portable_model_name("../sibling", model_dir) == "sibling"


def test_settings_and_strings_are_not_metrics(tmp_path):
    with pytest.raises(ValueError, match=r"metrics\['visual_input'\]: expected a number"):
        write_metrics_report(tmp_path / "m.json", {"rouge1": 1.0, "visual_input": "images"})
    with pytest.raises(ValueError, match=r"metrics\['flag'\]: expected a number"):
        write_metrics_report(tmp_path / "m.json", {"rouge1": 1.0, "flag": True})
    with pytest.raises(ValueError, match="no metric"):
        write_metrics_report(tmp_path / "m.json", {"protocol": "p"})
    with pytest.raises(ValueError, match="keys of the metrics-report schema"):
        write_metrics_report(tmp_path / "m.json", {"rouge1": 1.0}, extra={"model": "x"})
    assert not (tmp_path / "m.json").exists()


def test_a_non_finite_metric_is_written_as_null_and_left_out_when_read(tmp_path):
    path = write_metrics_report(tmp_path / "m.json", {"rouge1": 3.0, "bleu4": float("nan")})
    assert json.loads(path.read_text())["metrics"] == {"rouge1": 3.0, "bleu4": None}
    assert read_metrics_report(path).values == {"rouge1": 3.0}


def test_a_report_of_another_version_is_refused(tmp_path):
    with pytest.raises(ValueError, match="version 2"):
        parse_metrics({"format": REPORT_FORMAT, "version": 2, "metrics": {"rouge1": 1.0}}, source="m.json")


def test_a_report_without_metrics_needs_allow_empty(tmp_path):
    path = write_metrics_report(tmp_path / "m.json", {}, dataset="cirr", split="test1", allow_empty=True,
                                extra={"submission_files": ["cirr_test1_recall.json"]})
    payload = json.loads(path.read_text())
    assert (payload["metrics"], payload["split"], payload["submission_files"]) == ({}, "test1", ["cirr_test1_recall.json"])
    with pytest.raises(ValueError, match="no numeric metric"):
        read_metrics_report(path)


def test_a_before_after_retrieval_report_gives_the_trained_models_numbers(tmp_path):
    # csmcir-train's retrieval_metrics.json layout: the card states the numbers after training.
    from hub_cards import write_csmcir_card

    (tmp_path / "retrieval_metrics.json").write_text(json.dumps(
        {"before": {"recall_at_1": 1.0, "recall_at_5": 5.0}, "after": {"recall_at_1": 20.0, "recall_at_5": 45.5}}))
    assert read_metrics_report(tmp_path).values == {"recall_at_1": 20.0, "recall_at_5": 45.5}
    card = write_csmcir_card(tmp_path, metrics=tmp_path).read_text()
    assert "value: 45.5" in card and "value: 5.0" not in card
