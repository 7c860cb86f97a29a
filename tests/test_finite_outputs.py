"""Strict JSON outputs: no NaN or Infinity is ever written as a result (issue 17)."""

import json
import math

import numpy as np
import pytest
import torch

from interp.errors import UserError
from interp.outputs import NonFiniteError, check_finite, write_json


def _strict_load(path):
    """json.load that fails on NaN / Infinity, as a strict parser does."""
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_json_refuses_nan_and_names_the_key(tmp_path):
    # BUG before the fix: the NaN was written as the bare token NaN (invalid JSON).
    path = tmp_path / "summary.json"
    with pytest.raises(NonFiniteError) as err:
        write_json(path, {"config": {"seed": 0}, "capitals": {"top1": [0.3, float("nan")]}})
    assert "capitals.top1[1]" in str(err.value) and "summary.json" in str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    assert not path.exists()  # nothing half-written


@pytest.mark.parametrize("bad", [float("inf"), -math.inf, torch.tensor([1.0, float("nan")]),
                                 np.array([[0.0], [np.inf]]), np.float32("nan")])
def test_write_json_refuses_non_finite_in_tensors_and_arrays(tmp_path, bad):
    with pytest.raises(NonFiniteError, match=r"at 'x\.y"):
        write_json(tmp_path / "s.json", {"x": {"y": bad}})


def test_write_json_writes_strict_json_with_tensors_and_paths(tmp_path):
    obj = {"a": torch.tensor([0.5, 2.0]), "b": np.int64(3), "c": tmp_path, "d": [None, True],
           "e": np.float32(0.25)}
    path = write_json(tmp_path / "s.json", obj)
    assert _strict_load(path) == {"a": [0.5, 2.0], "b": 3, "c": str(tmp_path),
                                  "d": [None, True], "e": 0.25}


def test_check_finite_returns_value_and_names_stage():
    value = {"k": [1, 2.5]}
    assert check_finite("stage", value) is value
    with pytest.raises(NonFiniteError, match="^logit diff: non-finite value nan at '<top>'"):
        check_finite("logit diff", float("nan"))
