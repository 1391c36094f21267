"""`face-pipeline`, the console command: everyday edits are run by a warm process.

A cold `face-pipeline faces label ...` spends ~1 s importing SQLAlchemy, numpy, pydantic and Typer before it
does 5-20 ms of work, so naming 300 clusters from a terminal meant minutes of waiting (issue 14). The everyday
commands (WARM_COMMANDS, and `faces backfill`: a check for new photos spends ~2.5 s importing Dagster) are
therefore handed to a warm process, as build tools do with their daemons:

- The first call runs cold, as always, and starts in the background a small server that imports the CLI once.
- Each later call connects to the server's Unix socket and passes its arguments, environment, working
  directory and its stdin/stdout/stderr. The server forks a child that runs the command exactly as a cold
  process would (the same code, the settings read from the caller's environment, the output straight to the
  caller's terminal). The caller forwards Ctrl-C and exits with the child's status.
- The server serves only its own user (a 0700 directory, the peer's uid checked). It exits after
  FACE_CLI_WARM_IDLE_SECONDS (600) without a call, and it hands a call back to be run cold, then exits, once
  the installed code has changed. Its errors go to the `.log` beside its socket. FACE_CLI_WARM=0 turns all
  of this off; `python -m face_pipeline.cli` is always cold. FACE_CLI_WARM_DIR moves the socket (default:
  $XDG_RUNTIME_DIR, else the temp folder).

This module imports only the standard library: it is what runs before the choice is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

WARM_COMMANDS = frozenset(
    {"label", "label-face", "reject", "unassign", "rename-person", "merge-persons", "stats", "export", "backfill"}
)
# Modules a warm child would otherwise import (measured with -X importtime on `faces label` and `faces backfill`:
# Dagster and the ingest job are ~2.5 s of a no-op backfill's ~4.5 s).
PRELOAD = (
    "face_pipeline.cli",
    "face_pipeline.services.export",  # pandas
    "face_pipeline.services.labels",
    "face_pipeline.services.label_batches",
    "face_pipeline.services.library",
    "face_pipeline.services.space_registry",
    "face_pipeline.storage.vectors",
    "face_pipeline.defs.runner",  # dagster
    "face_pipeline.defs.ingest_assets",
)
STARTED, STALE, EXITED = b"P", b"S", b"X"
OFF_VALUES = {"0", "false", "no", "off"}
DEFAULT_IDLE_SECONDS = 600.0
_PACKAGE = Path(__file__).resolve().parent


def warm_enabled(env: dict[str, str] | os._Environ[str]) -> bool:
    return env.get("FACE_CLI_WARM", "1").strip().lower() not in OFF_VALUES


def runs_warm(argv: list[str]) -> bool:
    """Whether this command line is an everyday command or `faces backfill` (most often a check for new
    photos). The other pipeline commands start cold: they are long, and a fresh interpreter costs them little."""
    return len(argv) >= 2 and argv[0] == "faces" and argv[1] in WARM_COMMANDS


def socket_path(env: dict[str, str] | os._Environ[str]) -> Path:
    """One server per user, Python and installed package: `<dir>/face-pipeline-<uid>/cli-<key>.sock`."""
    base = env.get("FACE_CLI_WARM_DIR") or env.get("XDG_RUNTIME_DIR") or env.get("TMPDIR") or "/tmp"
    key = hashlib.sha1(f"{sys.executable}\0{_PACKAGE}".encode()).hexdigest()[:12]
    return Path(base) / f"face-pipeline-{os.getuid()}" / f"cli-{key}.sock"


def main() -> None:
    argv = sys.argv[1:]
    if runs_warm(argv) and warm_enabled(os.environ) and hasattr(socket, "SO_PEERCRED"):  # Linux
        path = socket_path(os.environ)
        code = run_warm(argv, path)
        if code is not None:
            sys.exit(code)
        start_server(path)
    from face_pipeline.cli import main as run_cold

    run_cold()


# --- the caller ------------------------------------------------------------------------------------------


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def run_warm(argv: list[str], path: Path) -> int | None:
    """The command's exit status from the warm server, or None when no server took it (then run it cold:
    nothing was done yet)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not _private(path.parent):
            raise PermissionError(path.parent)  # a socket others could have placed: stay cold
        conn.connect(str(path))
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        if _recv_exact(conn, 1) != STARTED:
            raise EOFError  # the code changed since the server started: it exits, this call runs cold
        (child,) = struct.unpack("!I", _recv_exact(conn, 4))
    except (OSError, EOFError):  # no server, a closed stdin, a server that just exited or stepped aside
        conn.close()
        return None
    # From here the command runs in the child: never run it a second time.
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {signum: signal.signal(signum, lambda number, _frame: _forward(child, number)) for signum in forwarded}
    try:
        if _recv_exact(conn, 1) != EXITED:
            raise EOFError
        (code,) = struct.unpack("!i", _recv_exact(conn, 4))
        return int(code)
    except (OSError, EOFError):
        print("error: the warm face-pipeline process ended without an exit status", file=sys.stderr)
        return 1
    finally:
        conn.close()
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def start_server(path: Path) -> None:
    """Start a server in the background for the next calls (best effort; a second one exits at once). Its
    errors go to `<socket>.log` beside the socket, in the private folder."""
    import subprocess

    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(path.parent):
            return
        with open(path.with_suffix(".log"), "w") as log:
            subprocess.Popen(
                [sys.executable, "-m", "face_pipeline.warm_cli", "--serve", str(_PACKAGE)],
                cwd=_PACKAGE.parent,  # so that -m finds this very package
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )


def _private(folder: Path) -> bool:
    """Ours, and nobody else may write, read or enter it."""
    info = folder.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o077


# --- the server ------------------------------------------------------------------------------------------


def code_fingerprint() -> tuple[int, int, int]:
    """Changes when a module of the package or the set of installed packages changes."""
    newest, count = 0, 0
    for root, dirs, files in os.walk(_PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime_ns)
                count += 1
    import sysconfig

    site = os.stat(sysconfig.get_paths()["purelib"]).st_mtime_ns
    return newest, count, site


def serve(path: Path, idle_seconds: float) -> None:
    """Accept calls until idle for `idle_seconds` or until the code changes."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private(path.parent):
        return  # somebody else's or a shared folder: stay cold
    lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115  (held for the server's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server is starting or running
    fingerprint = code_fingerprint()
    for module in PRELOAD:
        __import__(module)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError:  # e.g. a path past the 107 bytes a socket's name may hold: calls stay cold
        return
    listener.listen(16)
    listener.settimeout(idle_seconds)
    path.with_suffix(".pid").write_text(str(os.getpid()))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return
            conn.settimeout(None)
            with conn:
                if not _serve_one(conn, (listener, lock), fingerprint):
                    return
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        path.with_suffix(".pid").unlink(missing_ok=True)


def _serve_one(conn: socket.socket, server_files: tuple[Any, ...], fingerprint: tuple[int, int, int]) -> bool:
    """Hand one call to a forked child; False once the code has changed (the server then exits)."""
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.getuid():
        return True
    if code_fingerprint() != fingerprint:
        conn.sendall(STALE)
        return False
    try:
        head, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        if len(fds) != 3 or len(head) < 4:
            raise EOFError
        (size,) = struct.unpack("!I", head[:4])
        body = head[4:] + _recv_exact(conn, size - len(head) + 4)
        request = json.loads(body)
    except (OSError, EOFError, ValueError):
        return True
    if os.fork() == 0:
        code = 1
        try:
            for server_file in server_files:  # the socket, and the lock: a long command must not hold it
                server_file.close()
            code = _run_child(conn, fds, request)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return True


def _run_child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import io
    import time

    time.tzset()
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), line_buffering=True)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    sys.argv = ["face-pipeline", *request["argv"]]
    conn.sendall(STARTED + struct.pack("!I", os.getpid()))
    code = _run_command()
    import atexit

    atexit._run_exitfuncs()  # what a cold process runs at exit (the child leaves by os._exit)
    _flush_output()
    with contextlib.suppress(OSError):  # the caller may be gone; the command itself has finished
        conn.sendall(EXITED + struct.pack("!i", code))
    return code


def _run_command() -> int:
    from face_pipeline.cli import main as run_cold

    try:
        run_cold()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    if code is None:
        return 0
    if not isinstance(code, int):
        print(code, file=sys.stderr)
        return 1
    return code


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        if Path(sys.argv[2]) == _PACKAGE:  # the package the caller runs is the one imported here
            try:
                idle = float(os.environ.get("FACE_CLI_WARM_IDLE_SECONDS", DEFAULT_IDLE_SECONDS))
            except ValueError:
                idle = DEFAULT_IDLE_SECONDS
            serve(socket_path(os.environ), idle)
    else:
        main()
