"""Golden-output helpers shared by ``tests/csmcir/test_golden_csmcir.py`` and ``tests/mmaps/test_golden_mmaps.py``.

Import with ``from golden_outputs import ...`` (the tests folder is on ``sys.path`` through its conftest).

A golden test stores a seeded tiny model's *inputs* and *outputs* next to the test (safetensors for tensors, JSON
for token ids, text and parameter fingerprints) and compares the current code against them, as open_clip's
``tests/test_inference.py`` does. ``UPDATE_GOLDEN=1`` is the one switch that rewrites the stored files (the tests
then skip, saying which files they wrote); review the diff before committing it.

Failures say *what* changed: :func:`check_fingerprint` tells "init changed" (the seeded weights are not the stored
ones, so every output differs as a consequence) from a forward change (same weights, different outputs), and
:func:`assert_tensors_close` prints, per tensor, the shape, the worst element, how many elements are off and a few
stored/actual values side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_cards.atomic_files import atomic_path, write_json_atomically

#: The one regeneration switch.
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
REGENERATE_HINT = "if the change is intended, regenerate with UPDATE_GOLDEN=1 and review the diff"


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write ``tensors`` (made contiguous, on CPU) to a safetensors file atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing: create it with UPDATE_GOLDEN=1")
    return load_file(str(path))


def save_json(path: Path, payload: Any) -> None:
    write_json_atomically(path, payload, indent=2)


def load_json(path: Path) -> Any:
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing: create it with UPDATE_GOLDEN=1")
    return json.loads(path.read_text(encoding="utf-8"))


def skip_after_update(*paths: Path) -> None:
    """In update mode, end the test as skipped, naming the files that were rewritten."""
    if UPDATE_GOLDEN:
        pytest.skip("UPDATE_GOLDEN=1: regenerated " + ", ".join(p.name for p in paths))


# ------------------------------------------------------------------------------------------------- fingerprints


def parameter_fingerprint(model: torch.nn.Module, names: list[str]) -> dict[str, Any]:
    """The parameter count, the sum and absolute sum of all parameters and of a few named ones (in float64, so
    they compare at 1e-9 relative): enough to tell a changed initialisation (seed, init stds, module order, shapes)
    and to point at the part that changed."""
    params = dict(model.named_parameters())
    every = torch.cat([p.detach().double().flatten() for p in params.values()])
    fingerprint: dict[str, Any] = {
        "num_parameters": every.numel(),
        "all parameters": {"shape": [every.numel()], "sum": every.sum().item(), "abs_sum": every.abs().sum().item()},
    }
    for name in names:
        value = params[name].detach().double()
        fingerprint[name] = {"shape": list(value.shape), "sum": value.sum().item(), "abs_sum": value.abs().sum().item()}
    return fingerprint


def fingerprint_problems(actual: Mapping[str, Any], expected: Mapping[str, Any], rel: float = 1e-9) -> list[str]:
    """One line per difference between two :func:`parameter_fingerprint` results (empty when they agree)."""
    problems = []
    if actual.get("num_parameters") != expected.get("num_parameters"):
        problems.append(f"parameter count {actual.get('num_parameters')} != stored {expected.get('num_parameters')}")
    for name, stored in expected.items():
        if name == "num_parameters":
            continue
        now = actual.get(name)
        if now is None:
            problems.append(f"{name}: no such parameter any more")
            continue
        if now["shape"] != stored["shape"]:
            problems.append(f"{name}: shape {now['shape']} != stored {stored['shape']}")
            continue
        for key in ("sum", "abs_sum"):
            if abs(now[key] - stored[key]) > rel * max(1.0, abs(stored[key])):
                problems.append(f"{name}: {key} {now[key]!r} != stored {stored[key]!r}")
    return problems


def check_fingerprint(actual: Mapping[str, Any], expected: Mapping[str, Any], *, consequence: str = "") -> None:
    """Fail with "init changed" when the seeded weights differ from the stored fingerprint."""
    problems = fingerprint_problems(actual, expected)
    if problems:
        pytest.fail(
            "init changed: the seeded tiny model's weights are not the ones the golden outputs were made with"
            + (f" ({consequence})" if consequence else "") + ":\n  " + "\n  ".join(problems)
            + f"\n{REGENERATE_HINT}",
            pytrace=False,
        )


# -------------------------------------------------------------------------------------------------- comparisons


def _describe(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str | None:
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)} != stored {tuple(expected.shape)}"
    if actual.dtype != expected.dtype:
        return f"{name}: dtype {actual.dtype} != stored {expected.dtype}"
    if not actual.is_floating_point():
        if torch.equal(actual, expected):
            return None
        wrong = (actual != expected).nonzero().tolist()
        return f"{name}: {len(wrong)} of {actual.numel()} elements differ, first at {wrong[:3]}"
    a, e = actual.double(), expected.double()
    diff = (a - e).abs()
    bad = diff > atol + rtol * e.abs()
    if not bool(bad.any()) and bool(torch.isfinite(a).eq(torch.isfinite(e)).all()):
        return None
    worst = int(diff.nan_to_num(float("inf")).flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape)) if diff.dim() else ()
    flat_a, flat_e = a.flatten(), e.flatten()
    sample = ", ".join(f"{flat_e[i].item():.6g}→{flat_a[i].item():.6g}" for i in range(min(4, flat_a.numel())))
    return (f"{name}: {int(bad.sum())} of {bad.numel()} elements off (atol={atol:g}, rtol={rtol:g}); "
            f"max |diff| {diff.max().item():.3g} at {index} (stored {e[index].item():.8g}, now {a[index].item():.8g}); "
            f"first values stored→now: {sample}")


def assert_tensors_close(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *,
                         atol: float = 1e-5, rtol: float = 1e-5, what: str = "outputs",
                         after_fingerprint: bool = True) -> None:
    """Compare every tensor of ``actual`` with the stored one of the same name; one failure lists them all.

    For model outputs, call it after :func:`check_fingerprint` (``after_fingerprint=True``): the message then
    rightly says the weights are the stored ones and the forward computation changed. For anything else (processor
    outputs), pass ``after_fingerprint=False``.
    """
    missing = sorted(set(actual) - set(expected))
    if missing:
        pytest.fail(f"golden file has no {missing}: regenerate with UPDATE_GOLDEN=1", pytrace=False)
    problems = [p for name in actual if (p := _describe(name, actual[name].detach().cpu(), expected[name],
                                                          atol, rtol)) is not None]
    if problems:
        headline = (f"forward changed: {what} differ from the stored ones (the seeded weights match the stored "
                    "fingerprint)" if after_fingerprint else f"{what} differ from the stored ones")
        pytest.fail(headline + ":\n  " + "\n  ".join(problems) + f"\n{REGENERATE_HINT}", pytrace=False)
