"""The CLI's control master: one background client that later ``exec-client run`` calls share.

A build tool calls ``exec-client run`` once per command, and nearly all of such a call is the
interpreter importing the client (an event loop, WebSocket framing, the protocol's message
classes): ~10× a bare ``python3 -c pass``. As ssh's ControlMaster with ControlPersist does for
``ssh host cmd``, the first call starts a *master* in the background: a process that holds one
warm connection (one session) to the server and listens on a unix socket only our user can
reach. A later ``run`` with the same connection options (URL, token, CA file, resume) hands
the master its options, argv and stdin/stdout/stderr — the descriptors themselves (SCM_RIGHTS)
— and waits for the exit status, importing nothing of the client: the command reads our stdin
and writes to our stdout and stderr exactly as it would in a call of its own, and Ctrl-C,
SIGTERM and SIGHUP reach it the same way.

The master ends after ``persist`` seconds without a call (``--control-persist``,
``EXEC_CLIENT_CONTROL_PERSIST``; ``0`` turns it off entirely), when its session is lost (a
call then runs on its own and starts a new master), or on ``exec-client control stop``. It is
in a session of its own, with /dev/null as its stdio, so a ``$(exec-client run …)`` or a
build tool waiting for our output never waits for it.

Security: the socket's directory is ``$XDG_RUNTIME_DIR/exec-client`` or
``/tmp/exec-client-UID``, mode 0700 and ours (otherwise no master is used), the socket is
0600, and the master serves only callers of its own uid (``SO_PEERCRED``). A socket's name is
a hash of the connection options, so a different token never shares a master.

Wire, newline-delimited JSON on the unix socket:

- caller → master: ``{"run": {...}}`` with fds 0, 1, 2 attached; then ``{"signal": N}`` for
  each SIGINT/SIGTERM/SIGHUP; or ``{"stop": true}``;
- master → caller: ``{"accepted": true}`` once it takes the call, then ``{"exit": N}`` when
  the command is done; or ``{"fallback": "why"}``. A caller that sees the socket close before
  ``accepted`` (a master that was just ending) runs the command itself: nothing ran.

The caller's half (``call_master``, ``start_master``) imports only the standard library; the
master's half (``serve``) is the CLI's own ``run`` on a shared client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

    import anyio.abc

    from ._client import Client

DEFAULT_PERSIST_SECONDS: Final = 60.0
PERSIST_ENV: Final = "EXEC_CLIENT_CONTROL_PERSIST"
# A request line (argv and options) is at most this long; a longer one runs on its own.
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024
_RECEIVE_BYTES: Final = 64 * 1024
_SUN_PATH_MAX: Final = 107
_FORWARDED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The exit status of a call whose master vanished before saying how the command ended.
EXIT_MASTER_LOST: Final = 255


class ControlAddress:
    """Where the master for one set of connection options listens, and its lock."""

    def __init__(self, socket_path: str, lock_path: str) -> None:
        self.socket_path = socket_path
        self.lock_path = lock_path

    @classmethod
    def for_options(cls, url: str, token: str | None, ca_file: str | None, resume: bool) -> ControlAddress | None:
        """The address for these options, or None where no master can be used safely (a
        directory that is not ours alone, a path too long for a unix socket)."""
        import hashlib

        directory = _private_directory()
        if directory is None:
            return None
        identity = "\0".join([url, token or "", os.path.abspath(ca_file) if ca_file else "", "resume" if resume else "no-resume"])
        name = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        socket_path = os.path.join(directory, f"{name}.sock")
        if len(os.fsencode(socket_path)) > _SUN_PATH_MAX:
            return None
        return cls(socket_path, os.path.join(directory, f"{name}.lock"))


def persist_seconds(option: float | None) -> float:
    """``--control-persist`` if given, else the environment's, else the default; 0 is off."""
    if option is not None:
        return max(0.0, option)
    raw = os.environ.get(PERSIST_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_PERSIST_SECONDS
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 0.0  # an unreadable setting: no master rather than a surprise


def _private_directory() -> str | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    directory = os.path.join(runtime, "exec-client") if runtime else f"/tmp/exec-client-{os.getuid()}"
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(directory)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return directory


# --- the caller's half: standard library only ------------------------------------------------


def call_master(address: ControlAddress, request: dict[str, Any]) -> int | None:
    """Run ``request`` through the master at ``address``; its exit status, or None when there
    is no usable master (nothing ran: the caller runs the command itself)."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return None  # a closed stdio descriptor cannot be handed over
    line = json.dumps({"run": request}).encode() + b"\n"
    if len(line) > MAX_REQUEST_BYTES:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(address.socket_path)
            socket.send_fds(sock, [line], [0, 1, 2])
        except OSError:
            return None
        previous = {signum: signal.getsignal(signum) for signum in _FORWARDED_SIGNALS}

        def forward(signum: int, _frame: Any) -> None:
            try:
                sock.sendall(json.dumps({"signal": signum}).encode() + b"\n")
            except OSError:
                pass

        for signum in _FORWARDED_SIGNALS:
            signal.signal(signum, forward)
        try:
            answers = _answers(sock)
            if next(answers, {}).get("accepted") is not True:
                return None  # refused, or gone before it took the call: nothing ran
            done = next(answers, {})
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        sock.close()
    code = done.get("exit")
    if not isinstance(code, int):
        sys.stderr.write("exec-client: the control master ended before the command's record came\n")
        return EXIT_MASTER_LOST
    return code


def _answers(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The master's messages, one JSON object per line, until the socket ends."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            try:
                answer = json.loads(line)
            except ValueError:
                return
            if not isinstance(answer, dict):
                return
            yield answer
        try:
            data = sock.recv(_RECEIVE_BYTES)
        except OSError:
            return
        if not data:
            return
        buffer += data


def stop_master(address: ControlAddress) -> bool:
    """Ask the master at ``address`` to finish its calls and end; False if there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address.socket_path)
        sock.sendall(b'{"stop": true}\n')
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(_RECEIVE_BYTES):
            pass  # the master closes its end once it has taken the request
    except OSError:
        return False
    finally:
        sock.close()
    return True


def master_starting(address: ControlAddress) -> bool:
    """Whether a master holds (or is taking) this address's lock."""
    import fcntl

    try:
        fd = os.open(address.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return True  # cannot tell: do not start another
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock if we took it
    return False


def start_master(address: ControlAddress, options: dict[str, Any], token: str | None) -> None:
    """Start a master for ``address`` in the background unless one runs or is starting.

    It gets a session of its own and /dev/null as stdin's successor, stdout and stderr
    (nothing waiting for our output waits for it); the token comes through a pipe, not
    its environment or argv.
    """
    if master_starting(address):
        return
    read_end, write_end = os.pipe()
    try:
        argv = [sys.executable, "-m", "exec_client._control", json.dumps({"address": [address.socket_path, address.lock_path], **options})]
        env = {key: value for key, value in os.environ.items() if key not in ("EXEC_SERVER_TOKEN", "EXEC_SERVER_TOKEN_FILE")}
        pid = os.posix_spawn(
            sys.executable,
            argv,
            env,
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        del pid  # not waited for: it outlives us (init reaps it)
        os.write(write_end, json.dumps({"token": token}).encode())
    except OSError:
        pass  # no master this time: the next call tries again
    finally:
        os.close(read_end)
        os.close(write_end)


# --- the master's half -------------------------------------------------------------------------


def _peer_uid(stream: anyio.abc.SocketStream) -> int | None:
    import struct

    import anyio.abc

    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    try:
        credentials = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


class _Master:
    """The serving state: calls in flight, the idle deadline, and the stop request."""

    def __init__(self, client: Client, persist: float) -> None:
        import anyio

        self.client = client
        self.persist = persist
        self.calls = 0
        self.activity = anyio.Event()  # set when a call starts or ends, or a stop is asked for
        self.stopping = False

    def stop(self) -> None:
        """No new calls; the master ends once those in flight are done."""
        self.stopping = True
        self.changed()

    def changed(self) -> None:
        import anyio

        self.activity.set()
        self.activity = anyio.Event()

    async def wait_until_done(self) -> None:
        """Return once idle for ``persist`` seconds, or asked to stop with no call in flight."""
        import anyio

        while True:
            activity = self.activity
            if self.calls == 0:
                if self.stopping:
                    return
                with anyio.move_on_after(self.persist):
                    await activity.wait()
                    continue
                return
            await activity.wait()

    async def end_with_session(self) -> None:
        """A lost session ends the master (calls in flight get their failure): the next
        caller runs on its own and starts a new one."""
        await self.client.wait_lost()
        self.stop()

    async def serve_one(self, stream: anyio.abc.SocketStream) -> None:
        from . import _cli

        fds: list[int] = []
        try:
            async with stream:
                if _peer_uid(stream) != os.getuid():
                    return
                message, fds = await stream.receive_fds(_RECEIVE_BYTES, 3)  # type: ignore[attr-defined]
                buffer = bytearray(message)
                while b"\n" not in buffer and len(buffer) <= MAX_REQUEST_BYTES and message:
                    message = await stream.receive(_RECEIVE_BYTES)
                    buffer += message
                request = _parse_line(bytes(buffer))
                if request is None:
                    return
                if request.get("stop") is True:
                    self.stop()
                    return
                run = request.get("run")
                if not isinstance(run, dict) or len(fds) != 3:
                    return
                if self.stopping or not _cli.client_usable(self.client):
                    await stream.send(b'{"fallback": "the master is ending or resuming its session"}\n')
                    return
                self.calls += 1
                self.changed()
                try:
                    await stream.send(b'{"accepted": true}\n')
                    callers, fds = fds, []  # the caller's stdio is run_for_caller's to close
                    code = await _cli.run_for_caller(self.client, run, callers, _signals_from(stream, bytes(buffer)))
                finally:
                    self.calls -= 1
                    self.changed()
                await stream.send(json.dumps({"exit": code}).encode() + b"\n")
        except Exception:
            # The caller went away or sent nonsense; whatever it was, it must not take the
            # master, and with it every other caller's command, down with it.
            pass
        finally:
            for fd in fds:
                os.close(fd)


def _parse_line(data: bytes) -> dict[str, Any] | None:
    line, newline, _rest = data.partition(b"\n")
    if not newline:
        return None
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def _signals_from(stream: anyio.abc.SocketStream, first: bytes) -> Any:
    """The caller's forwarded signal numbers; its end of the socket closing is a hangup
    (it is gone: nobody waits for the command any more)."""
    import anyio

    buffer = first.partition(b"\n")[2]
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            parsed = _parse_line(line + b"\n")
            if parsed is not None and isinstance(parsed.get("signal"), int):
                yield parsed["signal"]
        try:
            data = await stream.receive(_RECEIVE_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            yield signal.SIGHUP
            return
        buffer += data


async def serve(address: ControlAddress, options: dict[str, Any], token: str | None) -> None:
    """Be the master at ``address`` until idle for ``persist`` seconds, stopped, or lost."""
    import fcntl

    import anyio

    from ._client import open_client

    lock = os.open(address.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another master has it
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()}\n".encode())  # who holds it, for `ps` and the tests
        async with open_client(
            options["url"],
            token=token,
            ca_file=options.get("ca_file"),
            resume=options.get("resume", True),
            client_name="exec-client-cli",
        ) as client:
            master = _Master(client, float(options["persist"]))
            try:
                os.unlink(address.socket_path)  # a dead master's
            except FileNotFoundError:
                pass
            listener = await anyio.create_unix_listener(address.socket_path, mode=0o600)
            bound = os.stat(address.socket_path).st_ino
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(listener.serve, master.serve_one, group)
                    group.start_soon(master.end_with_session)
                    await master.wait_until_done()
                    await listener.aclose()  # no new callers: a late one finds no socket
                    group.cancel_scope.cancel()
            finally:
                try:
                    if os.stat(address.socket_path).st_ino == bound:
                        os.unlink(address.socket_path)
                except OSError:
                    pass
    finally:
        os.close(lock)


def main() -> None:
    """``python -m exec_client._control OPTIONS_JSON``, the token as JSON on stdin."""
    import anyio

    options = json.loads(sys.argv[1])
    secret = json.loads(sys.stdin.read() or "{}")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir("/")  # keep no caller's directory busy
    socket_path, lock_path = options.pop("address")
    try:
        anyio.run(serve, ControlAddress(socket_path, lock_path), options, secret.get("token"))
    except Exception:
        sys.exit(1)  # e.g. the server is unreachable: callers run on their own


if __name__ == "__main__":
    main()
