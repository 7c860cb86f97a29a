"""One experiment run, the same for every command.

`ExperimentRun` does the set-up and tear-down every experiment shares, in this order:
resolve the model spec to its real name (`auto` -> `smollm2-135m` when GPT-2 is not
available), check the options and the output folder (overwrite guard, lock) *before* the
model loads, load the model, record provenance (resolved model, BOS, timings), and finally
write `summary.json` and swap the whole run folder into place (`interp.outputs.RunFolder`).

Example:
    >>> options = RunOptions(model="random:tiny", out=Path("/tmp/x"))
    >>> with ExperimentRun(options, "capitals", {"n_prompts": 10}) as run:
    ...     model = run.load_model()
    ...     with run.stage("lens"):
    ...         numbers = {"final_accuracy": 0.3}
    ...     run.finish(numbers)   # /tmp/x/random-tiny/capitals/summary.json
"""

import ctypes
import gc
import os
import sys
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

from interp.errors import UserError
from interp.outputs import RunFolder, model_slug, safe_name, write_json
from interp.provenance import Provenance

MAX_SEED = 2**64 - 1  # torch.manual_seed's range


@dataclass
class RunOptions:
    """The options every experiment command shares (`interp.commands._args`)."""

    model: str = "auto"
    seed: int = 0
    out: Path = Path("results")
    device: str | None = None
    bos: str = "auto"
    overwrite: bool = False

    @classmethod
    def from_args(cls, args) -> "RunOptions":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def check_seed(seed: int) -> int:
    """`seed` if it is an integer in [0, 2**64 - 1]; UserError naming --seed otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed}: must be an integer from 0 to 2**64 - 1; pass e.g. "
                        "--seed 0")
    return seed


def check_out(out: Path) -> Path:
    """`out` with `~` expanded, if it is (or can be created as) a writable folder."""
    out = Path(out).expanduser()
    existing = out
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder; pass a folder")
    if not existing.exists() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} is not writable; pass a folder you can "
                        "write to")
    return out


def check_device(device: str | None) -> str | None:
    """`device` if torch can use it here (`interp.models.checks.check_device`); the error
    names --device. None stays None (the loader's default)."""
    if device is None:
        return None
    from interp.models.checks import check_device as check_torch_device
    from interp.models.errors import DeviceError

    try:
        return check_torch_device(device)
    except DeviceError as err:
        raise UserError(f"--device {device}: {err}") from None


def return_freed_memory() -> bool:
    """Give the C heap's free pages back to the OS (glibc's `malloc_trim(0)`); False where
    there is no glibc (macOS, musl) and nothing was done.

    Freed tensors of a few MB stay in glibc's heap as free chunks: the process keeps their
    pages, so its RSS stays at the high-water mark of every earlier stage. Trimming after a
    stage lets the next one start from what is still alive. (Lowering glibc's mmap threshold
    instead, MALLOC_MMAP_THRESHOLD_, returns them too but about doubles the CPU time.)

    Example:
        >>> return_freed_memory()  # True on Linux with glibc
        True
    """
    gc.collect()  # reference cycles (e.g. an exception's frames) may still hold tensors
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def available_memory(device: str) -> int | None:
    """Free bytes for tensors on `device`: MemAvailable for the CPU, free memory for CUDA;
    None when unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def prompt_bytes(cfg, tokens: int) -> int:
    """A rough lower bound of the bytes one prompt of `tokens` tokens costs a patching run:
    its float32 logits and the cached activations of its clean and corrupted runs
    (about 9 d_model-sized vectors per layer and position, plus the attention pattern)."""
    per_position = cfg.d_vocab + 2 * cfg.n_layers * (9 * cfg.d_model + cfg.n_heads * tokens)
    return 4 * tokens * per_position


def check_memory(model, n_prompts: int, tokens: int = 16, flag: str = "--n-prompts") -> None:
    """Refuse `n_prompts` when even the rough lower bound of `prompt_bytes` exceeds the
    memory available on the model's device, with the estimate in the message."""
    free = available_memory(str(model.cfg.device))
    need = n_prompts * prompt_bytes(model.cfg, tokens)
    if free is None or need <= free:
        return
    fits = max(1, free // prompt_bytes(model.cfg, tokens))
    raise UserError(f"{flag} {n_prompts} needs at least {need / 2**30:.1f} GiB "
                    f"(~{prompt_bytes(model.cfg, tokens) / 2**20:.1f} MiB per prompt on "
                    f"{model.interp_spec}) but {free / 2**30:.1f} GiB is available; pass "
                    f"{flag} {fits} or fewer")


class ExperimentRun(AbstractContextManager):
    """The set-up, provenance and atomic summary of one experiment (see the module doc).

    Args:
        options: model, seed, out, device, bos, overwrite.
        experiment: the run folder's name (sanitised: no "/", no leading dot).
        config: the arguments that define the run; "model" (resolved) and "seed" are added.
            Stored as summary.json's `config` and compared by the overwrite guard.

    Raises:
        UserError: a bad seed, device or --out; UnknownModelError; OverwriteError;
            RunLockedError (another run writes the same folder): all before any model loads.
    """

    def __init__(self, options: RunOptions, experiment: str, config: dict):
        from interp.models import resolve_spec

        self.options = options
        check_seed(options.seed)
        self.out = out = check_out(options.out)  # the output root (figures find plotly.js here)
        self.spec = resolve_spec(options.model)
        check_device(options.device)
        self.config = {"model": self.spec, "seed": options.seed, **config}
        self.experiment = safe_name(experiment)
        self._folder = RunFolder(out / model_slug(self.spec) / self.experiment, self.config,
                                 options.overwrite)
        self.prov = Provenance(model=self.spec, seed=options.seed)
        self.model = None

    @classmethod
    def for_model(cls, model, out: Path, experiment: str, config: dict,
                  overwrite: bool = False, seed: int = 0) -> "ExperimentRun":
        """A run of an already loaded model (the library entry points)."""
        options = RunOptions(model=model.interp_spec, seed=seed, out=Path(out),
                             overwrite=overwrite)
        run = cls(options, experiment, config)
        run.model = model
        return run

    def __enter__(self) -> "ExperimentRun":
        self._folder.__enter__()
        if self.model is not None:
            self.use_model(self.model)
        return self

    def __exit__(self, *exc) -> None:
        self._folder.__exit__(*exc)

    @property
    def folder(self) -> Path:
        """Where to write the run's files (the staging folder; the target after `finish`)."""
        return self._folder.folder

    @property
    def target(self) -> Path:
        """The final folder, `<out>/<model-slug>/<experiment>/`."""
        return self._folder.target

    @contextmanager
    def stage(self, name: str):
        """Time a stage: `with run.stage("lens"): ...` (recorded in provenance). What the
        stage freed goes back to the OS when it ends (`return_freed_memory`)."""
        with self.prov.stage(name):
            yield
            return_freed_memory()

    def load_model(self):
        """Seed torch, load the resolved model on the chosen device, record it."""
        import torch

        from interp.models import load_model

        torch.manual_seed(self.options.seed)
        with self.prov.stage("load_model"):
            model = load_model(self.spec, device=self.options.device, seed=self.options.seed,
                               bos=self.options.bos)
        self.use_model(model)
        return model

    def use_model(self, model) -> None:
        """Record `model` (resolved spec, BOS) as the run's model."""
        self.model = model
        self.prov.set_model(model)

    def finish(self, summary: dict) -> Path:
        """Write summary.json (plus `config` and `provenance`) and swap the folder into
        place; returns the final folder."""
        record = {**summary, "config": self.config, "provenance": self.prov.record()}
        write_json(self.folder / "summary.json", record)
        return self._folder.commit()
