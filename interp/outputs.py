"""Result folders: whole-run atomic, locked, never silently replacing a different run.

A run folder is `<out>/<model-slug>/<experiment>/`. Its `summary.json` holds the run's
`config` (the arguments that define it). A run writes into a staging folder beside its
target (`.<experiment>.staging-<pid>-<random>`, same depth, so relative links hold) and
swaps it into place only when complete: the target always holds one whole run, the old or
the new, never a mix, whatever kills the process. An exclusive lock
(`.<experiment>.lock`) makes a second concurrent run into the same target fail at once.

Example:
    >>> with RunFolder(Path("/tmp/r/random-tiny/capitals"), {"seed": 0}) as run:
    ...     write_json(run.staging / "summary.json", {"config": {"seed": 0}})
    ...     run.commit()
"""

import ctypes
import errno
import fcntl
import json
import math
import os
import secrets
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from interp.errors import UserError
from interp.provenance import command_line

SUMMARY = "summary.json"


class OverwriteError(UserError, FileExistsError):
    """The target folder holds the results of a different run."""


class RunLockedError(UserError):
    """Another run is writing the same target folder right now."""


def model_slug(spec: str) -> str:
    """A folder name for a model spec: "random:gpt2" -> "random-gpt2", a path -> its name."""
    if os.sep in spec or spec.startswith("."):
        spec = Path(spec).name
    return spec.replace(":", "-").replace("/", "-")


def safe_name(name: str) -> str:
    """`name` as one harmless folder name: runs of other characters than [A-Za-z0-9_.-]
    become "-", and no leading dot (no hidden folder, no "..").

    Example:
        >>> safe_name("discover-../../x")
        'discover-..-..-x'
    """
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip(".")
    return cleaned or "unnamed"


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


def _previous_run(folder: Path) -> str | None:
    """Why `folder` may hold another run: None (empty or absent), "config" (read it from
    the summary), or a description of what is there instead."""
    summary = folder / SUMMARY
    if not summary.exists():
        return f"files but no {SUMMARY}" if folder.is_dir() and any(folder.iterdir()) else None
    try:
        data = json.loads(summary.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or "config" not in data:
        return f"an unreadable {SUMMARY} (not a JSON object with a config)"
    return "config"


def check_target(folder: Path, config: dict, overwrite: bool = False) -> None:
    """Refuse to replace a folder holding another run (a different config, an unreadable
    summary, or files without a summary) unless `overwrite`.

    Raises:
        OverwriteError: naming the folder and the fix.
    """
    if overwrite or not folder.exists():
        return
    if not folder.is_dir():
        raise OverwriteError(f"{folder} is a file, not a run folder; remove it, pass "
                             "--overwrite, or choose another --out")
    what = _previous_run(folder)
    if what == "config":
        previous = json.loads((folder / SUMMARY).read_text())["config"]
        if previous == json.loads(json.dumps(config, default=_jsonable)):
            return
        what = f"config {previous}"
    if what is None:
        return
    raise OverwriteError(f"{folder} holds a different run ({what}; this one: {config}). "
                         "Pass --overwrite to replace it, or choose another --out.")


def run_dir(out: Path, model_spec: str, experiment: str, config: dict,
            overwrite: bool = False) -> Path:
    """Create `<out>/<slug>/<experiment>/` to fill by hand (tests, notebooks), after the same
    overwrite check as `RunFolder`; not atomic (commands use `RunFolder`)."""
    folder = Path(out) / model_slug(model_spec) / experiment
    check_target(folder, config, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class RunFolder:
    """The lock, the staging folder and the final swap of one run into `target`.

    Use as a context manager: entering takes the lock (or raises `RunLockedError`), checks
    the overwrite guard, removes staging folders left by killed runs and creates a fresh
    one (`staging`); `commit()` swaps it into place; leaving without a commit (an error,
    Ctrl-C) deletes the staging folder and leaves the target as it was.
    """

    def __init__(self, target: Path, config: dict, overwrite: bool = False):
        self.target = Path(target)
        self.config = config
        self.overwrite = overwrite
        self.staging: Path | None = None
        self.committed = False
        self._lock_fd: int | None = None

    @property
    def folder(self) -> Path:
        """Where the run's files are: the staging folder until the commit, then the target."""
        return self.target if self.committed or self.staging is None else self.staging

    def _sibling(self, kind: str) -> Path:
        return self.target.with_name(f".{self.target.name}.{kind}")

    def __enter__(self) -> "RunFolder":
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._recover()
            check_target(self.target, self.config, self.overwrite)
            tag = f"{os.getpid()}-{secrets.token_hex(3)}"
            self.staging = self._sibling(f"staging-{tag}")
            self.staging.mkdir()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.staging is not None and not self.committed:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._unlock()

    def commit(self) -> Path:
        """Swap the staging folder into place; the old run (if any) is then deleted."""
        if not self.target.exists():
            os.rename(self.staging, self.target)
        elif not _exchange(self.staging, self.target):  # no renameat2: two renames
            old = self._sibling(f"old-{os.getpid()}")
            os.rename(self.target, old)
            os.rename(self.staging, self.target)
            self.staging = old
        self.committed = True
        shutil.rmtree(self.staging, ignore_errors=True)  # the old run, now beside the target
        return self.target

    def _recover(self) -> None:
        """Under the lock: put back a target moved aside by a run killed mid-swap (two-rename
        fallback only), then delete every staging/old folder left by killed runs."""
        leftovers = sorted(self.target.parent.glob(f".{self.target.name}.old-*"))
        if leftovers and not self.target.exists():
            os.rename(leftovers.pop(), self.target)
        for path in leftovers + list(self.target.parent.glob(f".{self.target.name}.staging-*")):
            shutil.rmtree(path, ignore_errors=True)

    def _lock(self) -> None:
        path = self._sibling("lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise RunLockedError(f"{self.target} is being written by another run ({holder}); "
                                 "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()}: {command_line()}, started {started}".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None
