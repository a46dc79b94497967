"""The writer lock of a store in object storage: an object `.NAME.lock` beside it, held as a lease.

A flock dies with its process; an object does not, so the lock is renewed while its run lives and expires when
it stops being renewed:
- `take` creates the object with a conditional PUT (If-None-Match: *): of two writers only one can;
- the holder rewrites it every `lease / 6` seconds, each time only if it is still the version it wrote
  (If-Match: its ETag);
- a lock the server says was last written more than `lease` seconds ago belongs to a run that is gone (killed,
  its machine lost): the next `take` takes it over, again only if it is still that version, so of two runs
  taking over one stale lock one wins and the other is refused;
- the run that holds it deletes it when it ends, if it is still its own.
- a lock whose processes are all known to have exited is taken over at once, lease or not: a run writes into
  its lock who its processes are on their machine (boot id, pid namespace, pid and the pid's start time; every
  rank of a torchrun job, since the others may still be writing after rank 0 died), and a run on the same
  machine can see they are gone (SIGKILL, the OOM killer). A process on another machine is never known to
  have exited there: a lock naming one waits out its lease.
A holder that cannot renew for a whole lease (a network cut, a process stopped) may find its lock taken: it
is told (`on_lost`; extraction then stops and says so) and never deletes the new holder's lock. Ages are the
server's (Last-Modified against the reply's Date), so no machine's clock matters. The lease a holder writes
in the object is the one others honour: COMPALIGN_LOCK_LEASE_S sets it (default LEASE_S).
Under torchrun rank 0 takes it for the whole job and renews it; `take(shared=True)` (the other ranks) does
nothing. On a filesystem without conditional writes beyond If-None-Match (not s3fs) the lock is made but never
renewed nor taken over: a killed run's lock is deleted by hand, as the refusal says.
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache.location import Location
from ..cache.store import CacheError

log = logging.getLogger(__name__)

LEASE_S = 120.0  # long enough for a renewal to survive S3's retries and a slow network, short for a requeued job
RENEWALS = 6  # renewals per lease: five may fail in a row before anyone may take the lock over


def lease_s() -> float:
    return float(os.environ.get("COMPALIGN_LOCK_LEASE_S") or LEASE_S)


class ObjectLock:
    def __init__(self, out: Location, on_lost: Callable[[], None] = _thread.interrupt_main,
                 processes: list[dict[str, Any]] | None = None):
        """`processes`: every process of this run (`this_process` of each rank), None where one is unknown."""
        self.out, self.lock, self.on_lost = out, out.sibling(f".{out.name}.lock"), on_lost
        self.processes = processes
        self.lease, self.etag, self.lost = lease_s(), None, False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def take(self, shared: bool = False) -> None:
        if shared:
            return
        me = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        self.holder, self.token, self.renewals = me, uuid.uuid4().hex, 0
        etag = self.lock.create_exclusive(self._body())
        if etag is None:
            etag = self._take_over()
        self.etag = etag
        if etag and self.lock.conditional:
            self._renewer = threading.Thread(target=self._renew, name="compalign-lock", daemon=True)
            self._renewer.start()

    def _take_over(self) -> str:
        """The ETag of the lock, taken over from a run that is gone; a lock still renewed refuses this run."""
        for _ in range(3):  # the lock may change hands while we look: look again
            seen = self.lock.version() if self.lock.conditional else None
            if self.lock.conditional and seen is None:  # released meanwhile: take it as any writer would
                etag = self.lock.create_exclusive(self._body())
                if etag is not None:
                    return etag
                continue
            try:
                holder, lease, processes = _holder(self.lock.read_text())
            except FileNotFoundError:
                continue
            if seen is None:  # no conditional writes here: a lock is never taken over
                raise self._refused(holder, None, lease)
            if isinstance(processes, list) and processes and all(exited_here(p) for p in processes):
                pids = ", ".join(str(p["pid"]) for p in processes)
                why = f"its process{'es have' if len(processes) > 1 else ' has'} exited (pid {pids} on this machine)"
            elif lease is not None and seen[1] > lease:
                why = f"not renewed for {seen[1]:.0f} s, its lease is {lease:.0f} s"
            else:
                raise self._refused(holder, seen, lease)
            etag = self.lock.replace_if(self._body(), seen[0])
            if etag is not None:
                log.warning("took over the lock %s of a run that is gone (%s): %s", self.lock, holder, why)
                return etag
        raise self._refused("that has just taken it", None, None)

    def _refused(self, holder: str, seen: tuple[str, float] | None, lease: float | None) -> CacheError:
        if seen is not None and lease is not None:
            return CacheError(f"another compalign extract ({holder}) is writing {self.out}: its lock {self.lock} was "
                              f"renewed {seen[1]:.0f} s ago. Wait for it to finish; if its run was killed, the lock "
                              f"expires {max(0.0, lease - seen[1]):.0f} s from now and the next extract takes it "
                              "over (two writers on one store corrupt it)")
        return CacheError(f"another compalign extract ({holder}) is writing {self.out}, or one that was killed left its "
                          f"lock {self.lock}; wait for it to finish, or if none is running delete the lock "
                          f"(`aws s3 rm {self.lock}`) and run again (two writers on one store corrupt it)")

    def _body(self) -> bytes:
        """The lock's content; the renewal count makes each version's ETag (an MD5 of the bytes) a new one."""
        body = {"holder": self.holder, "lease_s": self.lease, "renewal": self.renewals, "token": self.token}
        if self.processes is not None:
            body["processes"] = self.processes
        return json.dumps(body).encode()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / RENEWALS):
            self.renewals += 1
            try:
                etag = self.lock.replace_if(self._body(), self.etag)
            except Exception as e:  # noqa: BLE001  the network (botocore's errors are no OSError): the next
                # renewal tries again, the lease outlasts five; a renewer that died here would let the lease run out
                # under a run that goes on writing
                log.warning("could not renew the lock %s (%s: %s); trying again in %.0f s", self.lock,
                            type(e).__name__, e, self.lease / RENEWALS)
                continue
            if etag is None:
                etag = self._still_mine()
            if etag is None:
                self.lost = True
                log.error("the lock %s is no longer this run's: it went %.0f s unrenewed and another extract took "
                          "it over", self.lock, self.lease)
                self.on_lost()
                return
            self.etag = etag

    def _still_mine(self) -> str | None:
        """The lock's ETag if it still holds this run's body after all: a renewal whose reply was lost (or that
        s3fs retried after it had succeeded) changed it to a version this run never saw."""
        seen = self.lock.version()
        try:
            mine = seen is not None and json.loads(self.lock.read_text()).get("token") == self.token
        except (FileNotFoundError, ValueError, AttributeError):  # gone, or not a lock this compalign wrote
            mine = False
        return seen[0] if mine else None

    def close(self) -> None:
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
        if self.etag is not None and not self.lost:
            try:
                self.lock.unlink_if(self.etag) if self.etag and self.lock.conditional else self.lock.unlink()
            except Exception as e:  # noqa: BLE001  the store is out of reach (why the run is ending, often): say
                # so and let the run's own error be the one that shows
                log.warning("could not release the lock %s (%s: %s): the next extract on this machine takes it "
                            "over at once, one elsewhere once its lease has run out", self.lock, type(e).__name__, e)
        self.etag = None


def _holder(text: str) -> tuple[str, float | None, Any]:
    """(who holds it, its lease in seconds, its processes or None) from a lock's body. A lock of an older compalign
    is its holder's line and has no lease: it was never renewed, so its age says nothing and it is never taken over."""
    try:
        d = json.loads(text)
        return str(d["holder"]), float(d["lease_s"]), d.get("processes")
    except (ValueError, KeyError, TypeError, AttributeError):
        return text.strip(), None, None


def this_process() -> dict[str, Any] | None:
    """This process as another one on the same machine can check it (Linux; None elsewhere): the kernel's boot
    id and the pid namespace say whether its pid means the same process there, the start time whether the pid
    was reused since."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return {"boot_id": boot, "pid_ns": os.stat("/proc/self/ns/pid").st_ino, "pid": os.getpid(),
                "start": _stat(os.getpid())[1]}
    except (OSError, ValueError, IndexError):
        return None


def exited_here(process: Any) -> bool:
    """True only when `process` (one of a lock's, from `this_process`) is known to have exited: it ran in this boot of
    this machine and in this pid namespace, and its pid is now no process, a zombie, or a process started at
    another time. Another machine, another container, or no /proc: not known, False (the lease decides)."""
    here = this_process()
    if here is None or not isinstance(process, dict):
        return False
    if (process.get("boot_id"), process.get("pid_ns")) != (here["boot_id"], here["pid_ns"]):
        return False
    try:
        state, start = _stat(int(process["pid"]))
    except FileNotFoundError:
        return True
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return False
    return state in ("Z", "X") or start != process.get("start")


def _stat(pid: int) -> tuple[str, int]:
    """(state, start time in clock ticks since boot) of a process, from /proc/PID/stat (fields 3 and 22; the
    command name before them is in parentheses and may hold spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])
