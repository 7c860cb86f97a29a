"""Checksummed cache folders: each file's size, mtime and sha256, recorded in a marker file.

A quick check compares sizes and mtimes on every load; a file whose mtime changed (a copy, a
touch, an edit) or a full check (`full=True`) is hashed again. A hash that matches refreshes
the recorded mtime, so the next quick check is quick again.

Example:
    >>> records = record_files(folder, exclude={"marker.json"})
    >>> check_files(folder, records)          # None: every file is as recorded
    >>> (folder / "w.bin").write_bytes(b"x")
    >>> check_files(folder, records)
    'w.bin has 1 bytes, expected 4096'
"""

import hashlib
from pathlib import Path

CHUNK = 1 << 22


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_files(folder: Path, exclude: set[str] = frozenset()) -> dict[str, dict]:
    """{name: {"size", "mtime_ns", "sha256"}} for every regular file in `folder`."""
    records = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.name not in exclude:
            stat = path.stat()
            records[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                  "sha256": sha256(path)}
    return records


def check_files(folder: Path, records: dict[str, dict], full: bool = False) -> str | None:
    """None when every recorded file is present and unchanged, else what is wrong (one line).

    Args:
        folder: the cache folder.
        records: from `record_files`; the `mtime_ns` of a file whose hash still matches is
            updated in place (the caller may save them).
        full: hash every file, not only those whose size or mtime changed.
    """
    for name, want in records.items():
        path = Path(folder) / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != want["size"]:
            return f"{name} has {stat.st_size} bytes, expected {want['size']}"
        if full or stat.st_mtime_ns != want.get("mtime_ns"):
            if sha256(path) != want["sha256"]:
                return f"{name} has changed (its sha256 differs from the recorded one)"
            want["mtime_ns"] = stat.st_mtime_ns
    return None
