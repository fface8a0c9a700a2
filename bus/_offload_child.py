"""The process side of :mod:`bus.offload`: read a call, run it, send the outcome back.

Started by ``bus.offload`` as ``python -c`` with the parent's ``sys.path``; speaks frames
of ``kind (1 byte) + length (8 bytes, big-endian) + pickle`` over one socket:

* parent → child ``C``: ``(function, args, kwargs)``;
The argument after the niceness lists modules to import at start (those earlier calls
of the pool needed), so a replacement process is warm before it is used.

* child → parent ``B`` once, when it has started (imports done);
* child → parent ``S`` (the call is unpickled and starts now: the time budget starts
  here, so imports made by unpickling are not charged to the input), then ``R`` with the
  pickled result, ``E`` with the pickled exception, or ``F`` with a UTF-8 description when
  the exception itself cannot be pickled.

The child ignores SIGINT (the parent decides when it stops), dies with its parent
(``PR_SET_PDEATHSIG``), runs at a lower priority (``nice``) so untrusted work yields the
CPU to the event loops of the workers, and has an address-space limit so a value
that asks for hundreds of gigabytes fails with ``MemoryError`` instead of swapping the
machine. It exits when the parent closes the socket.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import socket
import struct
import sys
import traceback
from typing import Any

_HEADER = struct.Struct(">cQ")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except ConnectionResetError:  # the parent went away: same as a closed socket
            return None
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _send(sock: socket.socket, kind: bytes, body: bytes) -> None:
    sock.sendall(_HEADER.pack(kind, len(body)) + body)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (best effort elsewhere)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(0)


def _limit_memory(limit: int) -> None:
    if limit <= 0:
        return
    with contextlib.suppress(Exception):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _error_frame(exc: BaseException) -> tuple[bytes, bytes]:
    """Pickle ``exc`` with a note holding the child's traceback (code lines, no locals)."""
    from bus.errors import MeshError  # noqa: PLC0415 - imported on the first error only

    if not isinstance(exc, MeshError):
        with contextlib.suppress(Exception):
            exc.add_note("".join(traceback.format_exception(exc, chain=False))[-4000:])
    try:
        body = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(body)  # an exception whose __init__ takes other arguments fails here
        return b"E", body
    except Exception:
        return b"F", f"{type(exc).__name__}: {exc}"[:2000].encode("utf-8", "replace")


def serve(sock: socket.socket) -> None:
    while True:
        head = _recv_exact(sock, _HEADER.size)
        if head is None:
            return
        _kind, size = _HEADER.unpack(head)
        body = _recv_exact(sock, size)
        if body is None:
            return
        fatal = False
        try:
            fn, args, kwargs = pickle.loads(body)
            _send(sock, b"S", b"")
            result: Any = fn(*args, **kwargs)
            try:
                out = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise TypeError(f"the result of {fn!r} cannot be pickled: {exc}") from None
            _send(sock, b"R", out)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
            # After MemoryError the interpreter may be in a poor state: start afresh.
            fatal = isinstance(exc, MemoryError | SystemExit | KeyboardInterrupt)
            kind, out = _error_frame(exc)
            try:
                _send(sock, kind, out)
            except OSError:
                return
            del exc
        if fatal:
            return


def main() -> None:
    fd, memory_limit, niceness = (int(a) for a in sys.argv[1:4])
    preload = [m for m in (sys.argv[4] if len(sys.argv) > 4 else "").split(",") if m]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if niceness > 0:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    for module in preload:  # what earlier calls needed: be warm for the next one
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    _limit_memory(memory_limit)
    sock = socket.socket(fileno=fd)
    try:
        _send(sock, b"B", b"")  # started: the pool prefers processes that have
        serve(sock)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
