"""The store's lease: one launch at a time writes a result store.

Two launches on one store (the same grid twice, or two grids) would train the same jobs
twice and race on the model cache. ``sweeper launch`` therefore holds a lease, the file
``RESULTS/.lease.json`` (launch id, host, pid, grid, start time, heartbeat), from before
it reads the store until it ends, on success, error or Ctrl-C alike. A second launch
waits for it (``--wait``) or exits 2 naming the holder. Reading commands (query, report,
check) never take it.

A holder refreshes the heartbeat every ``HEARTBEAT_S`` from a background thread. A lease
is *stale*, and the next launch takes it over, when its heartbeat is older than ``TTL_S``
(a SIGKILLed launch, a lost machine), or at once when it was taken on this host by a
process that no longer exists.

How taking it is made safe:

- **Local disk (and NFS):** every check-and-write runs under ``flock`` on the store
  folder. A new lease is written under a unique name, then ``os.link``-ed to its place,
  which fails if a lease exists (exclusive create, with the whole content at once, also
  on NFS); a stale one is replaced with ``os.replace``. Where the folder cannot be
  locked (some NFS setups refuse ``flock`` on a folder), creation stays exclusive but two
  launches taking over the same stale lease at the same moment could both succeed.
- **A damaged lease** (not JSON, a field of the wrong type, a heartbeat that is not a
  finite time or lies more than a TTL ahead, a pid no process can have, a folder where
  the file belongs) is written by nothing that runs (writes are atomic), so it is stale:
  it is taken over the same way, a folder moved into ``damaged/`` (never deleted), and
  ``took_over`` says what was wrong, for the launch to report in one line.
- **Object stores** have no portable write-if-absent. A launch that finds no lease (or a
  stale one) writes its own, waits ``SETTLE_S``, and reads it back: of two launches
  that both wrote, the one whose write came last wins and the other backs off. The
  residual race, stated honestly: if one launch's write lands more than ``SETTLE_S``
  after the other has read its own back (a launch stalled between reading and writing),
  both believe they hold the lease until the next heartbeat, when the overwritten one
  sees a foreign lease and marks its lease ``lost``. A holder that stalls for longer
  than ``TTL_S`` can likewise be overtaken. Neither tears anything: every result
  fragment and cached model is written under a unique staging name and renamed
  (``store.put_bytes``), and readers drop a cell stored twice; the cost is work done twice.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable

import pyarrow.fs as pafs

from sweeper import store
from sweeper.errors import UserError

LEASE_FILE = store.LEASE_FILE
TTL_S = 300.0  # long enough for a slow object store or a paused driver, short enough to wait out
HEARTBEAT_S = 30.0  # a tenth of TTL_S: several missed refreshes before a lease goes stale
SETTLE_S = 2.0  # object stores only: time for a racing writer's lease to land
POLL_S = 5.0  # how often a waiting launch looks again
PID_MAX = 2**31 - 1  # no system hands out a larger pid (os.kill overflows beyond it)


@dataclass(frozen=True)
class Holder:
    """What a lease file says; ``damaged`` says what is wrong with one that cannot be
    trusted (then the other fields mean nothing)."""

    launch_id: str
    host: str
    pid: int
    grid: str
    started: str  # ISO 8601, UTC
    heartbeat: float  # seconds since the epoch
    damaged: str = ""

    def line(self) -> str:
        if self.damaged:
            return f"a damaged lease ({self.damaged})"
        age = max(0.0, time.time() - self.heartbeat)
        return (f"launch {self.launch_id} of grid {self.grid!r} (host {self.host}, pid {self.pid}, "
                f"since {self.started}, heartbeat {age:.0f} s ago)")

    def stale(self, ttl: float) -> bool:
        # A heartbeat more than a TTL ahead comes from no clock this store shares: it would
        # never go stale.
        if self.damaged or abs(time.time() - self.heartbeat) > ttl:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _damaged(why: str) -> Holder:
    return Holder("damaged", "", 0, "", "", 0.0, why)


_FIELDS = {"launch_id": str, "host": str, "pid": int, "grid": str, "started": str, "heartbeat": (int, float)}
_KIND_NAMES = {name: {int: "an integer", str: "text"}.get(kind, "a number") for name, kind in _FIELDS.items()}


def parse(data: bytes) -> Holder:
    """A lease file's bytes as a Holder, every field checked; a damaged Holder (saying
    why) for anything sweeper never writes."""
    try:
        record = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return _damaged("not JSON")
    if not isinstance(record, dict) or set(record) != set(_FIELDS):
        return _damaged(f"not a lease record: fields {', '.join(_FIELDS)} expected")
    for name, kind in _FIELDS.items():
        if isinstance(record[name], bool) or not isinstance(record[name], kind):
            return _damaged(f"{name} {record[name]!r} is not {_KIND_NAMES[name]}")
    if not 0 < record["pid"] <= PID_MAX:
        return _damaged(f"pid {record['pid']} is out of range")
    if not math.isfinite(record["heartbeat"]):
        return _damaged(f"heartbeat {record['heartbeat']!r} is not a finite time")
    if record["heartbeat"] - time.time() > TTL_S:  # it would never go stale
        return _damaged(f"heartbeat {record['heartbeat']!r} lies more than {TTL_S:.0f} s in the future")
    return Holder(**{**record, "heartbeat": float(record["heartbeat"])})


class LeaseHeld(UserError):
    """The store is leased to another launch."""

    def __init__(self, location: store.Location, holder: Holder):
        super().__init__(f"{location.text} is in use by {holder.line()}; "
                         f"rerun with --wait to start when it ends")
        self.holder = holder


class Lease:
    """The lease of one store for one launch; a context manager that holds it."""

    def __init__(self, location: store.Location, launch_id: str, grid: str, *,
                 ttl: float = TTL_S, heartbeat: float = HEARTBEAT_S, settle: float = SETTLE_S):
        self.location, self.ttl, self.heartbeat_s, self.settle = location, ttl, heartbeat, settle
        self.mine = Holder(launch_id, socket.gethostname(), os.getpid(), grid,
                           datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time())
        self.held = self.lost = False
        self.took_over = ""  # what was wrong with a damaged lease this one replaced
        self._created = False  # this lease made the store folder (removed again if left empty)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = isinstance(location.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------ taking and giving back

    def acquire(self, wait: bool = False, on_wait: Callable[[Holder], None] | None = None,
                poll: float = POLL_S) -> "Lease":
        """Take the lease, or raise ``LeaseHeld``; with ``wait``, look again every ``poll``
        seconds until it is free, calling ``on_wait`` each time the holder changes."""
        told = None
        while True:
            holder = self._try_take()
            if holder is None:
                break
            if not wait:
                raise LeaseHeld(self.location, holder)
            if on_wait and (told is None or told.launch_id != holder.launch_id):
                on_wait(holder)
            told = holder
            time.sleep(poll)
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="sweeper-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Give the lease back (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held and not self.lost:
            self._locked(self._delete_if_mine)
        self.held = False
        if self._created and os.path.isdir(self.location.path) and not os.listdir(self.location.path):
            os.rmdir(self.location.path)  # a launch that stopped before writing leaves no trace

    def __enter__(self) -> "Lease":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._locked(self._refresh)
            except OSError:
                pass  # a blip of the store: the next beat tries again, well within the TTL
            if self.lost:
                return

    # ------------------------------------------------------------ one step each, under the lock

    def _try_take(self) -> Holder | None:
        """None when the lease is now ours, else who holds it."""
        self.mine = Holder(**{**asdict(self.mine), "heartbeat": time.time()})
        with store.naming(self._path()):  # a read-only or full store: one line naming the lease
            if self._local:
                return self._locked(self._take_local)
            current = self._read()
            if current is not None and not current.stale(self.ttl):
                return current
            store.put_bytes(self.location, LEASE_FILE, self._bytes())
            self.took_over = current.damaged if current is not None else ""
            time.sleep(self.settle)  # let a racing writer's lease land, then see who won
            current = self._read()
            return None if current == self.mine else current

    def _take_local(self) -> Holder | None:
        current = self._read()
        if current is not None and not current.stale(self.ttl):
            return current
        if os.path.isdir(self._path()) and not os.path.islink(self._path()):  # damaged: kept, moved aside
            os.makedirs(self.location.sub(store.DAMAGED_DIR), exist_ok=True)
            os.rename(self._path(), self.location.sub(store.DAMAGED_DIR, f"{LEASE_FILE}-{uuid.uuid4().hex[:8]}"))
        temporary = self._write_temporary()
        try:
            if not os.path.lexists(self._path()):
                os.link(temporary, self._path())  # exclusive create, whole content at once
            else:
                os.replace(temporary, self._path())  # a stale or damaged lease
        except FileExistsError:  # a writer that does not take the lock got there first
            return self._read()
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        self.took_over = current.damaged if current is not None else ""
        return None

    def _refresh(self) -> None:
        if self._read() != self.mine:
            self.lost = True  # taken over after a stall longer than the TTL
            return
        self.mine = Holder(**{**asdict(self.mine), "heartbeat": time.time()})
        if self._local:
            os.replace(self._write_temporary(), self._path())
        else:
            store.put_bytes(self.location, LEASE_FILE, self._bytes())

    def _delete_if_mine(self) -> None:
        if self._read() == self.mine:
            store.delete_bytes(self.location, LEASE_FILE)

    # ------------------------------------------------------------ files

    def _locked(self, step):
        """Run ``step`` holding an exclusive flock on the store folder (local stores); on
        object stores there is no lock to take."""
        if not self._local:
            return step()
        import fcntl

        if not os.path.isdir(self.location.path):
            os.makedirs(self.location.path)
            self._created = True
        folder = os.open(self.location.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)
            except OSError:
                pass  # NFS may refuse a lock on a folder: os.link alone keeps creation exclusive
            return step()
        finally:
            os.close(folder)  # closing drops the flock

    def _path(self) -> str:
        return self.location.sub(LEASE_FILE)

    def _bytes(self) -> bytes:
        return json.dumps({name: getattr(self.mine, name) for name in _FIELDS}, sort_keys=True).encode()

    def _write_temporary(self) -> str:
        temporary = self.location.sub(f"{LEASE_FILE}.{uuid.uuid4().hex[:8]}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(self._bytes())
        except BaseException:  # a full disk: no half-written temporary left behind
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        return temporary

    def _read(self) -> Holder | None:
        return read(self.location)


def read(location: store.Location) -> Holder | None:
    """The store's lease, or None. A lease that cannot be trusted (``parse``; or a folder
    where the file belongs) is written by nothing that runs (writes are atomic), so it
    reads as a damaged one, which is stale."""
    kind = location.fs.get_file_info(location.sub(LEASE_FILE)).type
    if kind == pafs.FileType.NotFound:
        return None
    if kind != pafs.FileType.File:
        return _damaged(f"{LEASE_FILE} is a folder, not a file")
    data = store.get_bytes(location, LEASE_FILE)
    return None if data is None else parse(data)
