"""One run per workdir: an exclusive lock that `pretrain` holds for as long as it trains.

    with workdir_lock.hold(workdir):   # WorkdirInUse (one line) if a live run holds it
        ...

The lock is `<workdir>/lock.json`: an advisory `flock` on it (the kernel drops it when the holder dies, however it
dies) plus the holder's PID, host and start time, for the message. Its content outlives a killed holder, so:
- flock held: a live process of this host has it → refused, naming PID and host.
- flock free, content naming a process of this host: that process is gone (a kill -9, a crash) → taken over with a
  warning.
- flock free, content naming another host: flock does not reach across hosts on every shared filesystem, so we
  cannot tell whether that run is alive → refused, with the file to delete if it is not.
A clean exit empties the file (it is never unlinked: a process waiting on the old inode would lock a file nobody
else sees). Multi-host runs: process 0 holds it for the run.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket

LOCK_FILE = "lock.json"


class WorkdirInUse(RuntimeError):
    """Another run holds the workdir (a user error: one line, exit 1)."""


def _owner_text(owner):
    since = f", since {owner['started']}" if owner.get("started") else ""
    return f"PID {owner.get('pid', '?')} on {owner.get('host', '?')}{since}"


def _read_owner(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace").strip()
    if not text:
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?"}
    return owner if isinstance(owner, dict) else {"pid": "?", "host": "?"}


def acquire(workdir, warn=print):
    """Lock `workdir` for this process → the open file descriptor (pass it to `release`). Raises WorkdirInUse."""
    path = os.path.join(os.fspath(workdir), LOCK_FILE)
    host = socket.gethostname()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd) or {}
            raise WorkdirInUse(f"{workdir}: workdir in use by {_owner_text(owner)} (one run per workdir; "
                               "wait for it, or give this run another --workdir)") from None
        owner = _read_owner(fd)
        if owner and owner.get("host") != host:
            raise WorkdirInUse(f"{workdir}: workdir locked by {_owner_text(owner)} (another host: its liveness "
                               f"cannot be checked from here; if that run is over, delete {path})")
        if owner:
            warn(f"warning: {workdir}: taking over the lock of {_owner_text(owner)}, which is no longer running")
        me = dict(pid=os.getpid(), host=host, started=datetime.datetime.now().isoformat(timespec="seconds"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return fd
    except BaseException:
        os.close(fd)  # drops our flock, if we got it
        raise


def release(fd):
    """Empty the lock file and drop the lock."""
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(workdir, warn=print):
    fd = acquire(workdir, warn)
    try:
        yield
    finally:
        release(fd)
