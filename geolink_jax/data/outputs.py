"""Output files of every job, written so that nothing half-written ever carries a final name: atomic writes (local
paths or any Apache Beam filesystem URL), the staged output directory, manifest.json and errors.jsonl, and the
percentile summary manifests record. Knows no family and no record format."""

import contextlib
import json
import os
import pathlib
import shutil

import numpy as np

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
PERCENTILES = (50, 90, 95, 99)


class JobError(RuntimeError):
    """A job that cannot go on (an output directory in the way, a --strict stop, …): one line for the user."""


def is_remote(path):
    return "://" in str(path)


def join_path(out_dir, name):
    return f"{str(out_dir).rstrip('/')}/{name}"


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside local `path` to write to; renamed onto `path` when the block ends without an error
    (and removed when it raises)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_bytes(path, data):
    """`data` to `path` whole: a local path through a temporary name, a remote URL through Beam's FileSystems."""
    if not is_remote(path):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
        return
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_jsonl(path, rows):
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def load_manifest(out_dir):
    """manifest.json of a local or Beam-filesystem output directory."""
    if not is_remote(out_dir):
        with open(pathlib.Path(out_dir) / MANIFEST) as f:
            return json.load(f)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(join_path(out_dir, MANIFEST)) as f:
        return json.loads(f.read().decode())


def stats(values):
    """{p50, p90, p95, p99, max, mean} of a list of counts (zeros for an empty list)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {**{f"p{q}": 0 for q in PERCENTILES}, "max": 0, "mean": 0.0}
    out = {f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES}
    out.update(max=int(v.max()), mean=float(v.mean()))
    return out


def check_output(out_dir, overwrite=False):
    """An existing non-empty output directory is replaced only with overwrite (JobError otherwise)."""
    out_dir = pathlib.Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise JobError(f"{out_dir} exists and is not empty: pass --overwrite to replace it, or choose a new "
                       "directory")


def staged_output(out_dir, overwrite, write):
    """`write(staging_dir)` into a staging directory beside `out_dir`, which replaces `out_dir` only when `write`
    returned: a failed or interrupted run leaves `out_dir` as it was. Returns what `write` returned."""
    final = pathlib.Path(out_dir)
    check_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        result = write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.is_dir() and any(final.iterdir()):
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)  # onto a missing or empty directory
    return result


def output_dir_problem(out):
    """Why `out` cannot be an output directory (it or a parent is a file, or it is not writable), or None; a remote
    URL is not checked here."""
    if is_remote(out):
        return None
    path = pathlib.Path(out).absolute()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                return f"--out {out}: {p} is a file, not a directory"
            if not os.access(p, os.W_OK | os.X_OK):
                return f"--out {out}: {p} is not writable"
            return None
    return None
