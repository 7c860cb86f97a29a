"""Result folders and atomic writes that never silently overwrite a different run.

A run folder is `<out>/<model-slug>/<experiment>/`. Its `summary.json` holds the run's
`config` (the arguments that define it). Writing into a folder whose summary has another
config raises `OverwriteError`, unless `overwrite=True`.
"""

import json
import math
import os
import tempfile
from pathlib import Path

from interp.errors import UserError


class OverwriteError(UserError, FileExistsError):
    """The target folder holds the results of a different run."""


def model_slug(spec: str) -> str:
    """A folder name for a model spec: "random:gpt2" -> "random-gpt2", a path -> its name."""
    if os.sep in spec or spec.startswith("."):
        spec = Path(spec).name
    return spec.replace(":", "-").replace("/", "-")


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write to a temp file beside `path`, then rename over it (readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class NonFiniteError(UserError, ValueError):
    """A result holds NaN or an infinity, which is never written as a number."""


def check_finite(name: str, value):
    """Return `value` (a number, tensor, array, or nested dict/list of them) if it is finite.

    Args:
        name: what the value is (a stage or a file), named in the error.
        value: the value to check; strings, bools, None and other objects pass.

    Raises:
        NonFiniteError: some number in `value` is NaN or infinite; the message names `name`
            and the key path of the first such number.

    Example:
        >>> check_finite("capitals", {"accuracy": [0.3, 0.5]})
        {'accuracy': [0.3, 0.5]}
        >>> check_finite("capitals", {"accuracy": [0.3, float("nan")]})
        Traceback (most recent call last):
        ...
        interp.outputs.NonFiniteError: capitals: non-finite value nan at 'accuracy[1]'; ...
    """
    _plain(value, name, "")
    return value


def _plain(obj, name: str, where: str):
    """`obj` as plain JSON types (tensors and arrays as lists); raise on a non-finite number."""
    if isinstance(obj, dict):
        return {key: _plain(value, name, f"{where}.{key}" if where else str(key))
                for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value, name, f"{where}[{i}]") for i, value in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise NonFiniteError(
            f"{name}: non-finite value {obj} at '{where or '<top>'}'; a result must be a finite "
            "number (check the inputs and settings of this stage, e.g. a threshold or a metric "
            "that divides by zero)")
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return _plain(_jsonable(obj), name, where)


def write_json(path: Path, obj) -> Path:
    """Write `obj` as strict JSON (no NaN or Infinity), atomically.

    Raises:
        NonFiniteError: `obj` holds a non-finite number; the message names the key path.
    """
    plain = _plain(obj, str(path), "")
    return write_atomic(path, json.dumps(plain, indent=2, allow_nan=False) + "\n")


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run_dir(out: Path, model_spec: str, experiment: str, config: dict,
            overwrite: bool = False) -> Path:
    """Create (or reuse) `<out>/<slug>/<experiment>/` for a run with this config.

    Raises:
        OverwriteError: the folder already holds a run with a different config.
    """
    folder = Path(out) / model_slug(model_spec) / experiment
    summary = folder / "summary.json"
    if summary.exists() and not overwrite:
        try:
            previous = json.loads(summary.read_text()).get("config")
        except (json.JSONDecodeError, OSError):
            previous = "unreadable"
        if previous != json.loads(json.dumps(config, default=_jsonable)):
            raise OverwriteError(
                f"{folder} holds a different run (config {previous}, this one {config}). "
                "Pass --overwrite to replace it, or choose another --out.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
