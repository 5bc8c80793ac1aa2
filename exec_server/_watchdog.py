"""The watchdog: no command outlives its server, even a server that was SIGKILLed.

A server that exits normally kills every tree itself. One that is killed outright (or
crashes) runs no code at all, so a tiny shell watchdog, started with the server, waits on a
pipe whose write end only the server holds. A clean exit writes a line first; end-of-file
without that line means the server died, and the watchdog SIGKILLs every process whose
environment carries this server's tree marker (``_tree.TREE_MARKER_VAR``) -- among them each
command's PID-namespace init, whose death takes every process of its namespace with it. (Each
init also watches the server's pidfd and exits on its own when the server dies.)
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Final

import trio

from . import _tree

# $1: the marker prefix of this server's commands. stdin: the server's pipe.
_SCRIPT: Final = r"""
trap '' INT TERM HUP
if IFS= read -r _; then exit 0; fi
for d in /proc/[0-9]*; do
    # The braces: a process gone meanwhile makes the redirection itself fail, quietly.
    if { tr '\0' '\n' < "$d/environ"; } 2>/dev/null | grep -q "^$1"; then
        kill -9 "${d#/proc/}" 2>/dev/null
    fi
done
"""
_CLEAN_EXIT: Final = b"clean\n"
_REAP_SECONDS: Final = 2.0


class Watchdog:
    """Started by ``Server.run`` before any command; ``stop`` on a clean exit."""

    def __init__(self, server_id: str) -> None:
        read_end, self._write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self._popen = subprocess.Popen(
                ["/bin/sh", "-c", _SCRIPT, "exec-server-watchdog", f"{_tree.TREE_MARKER_VAR}={server_id}:"],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C to the server's group must not reach it.
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        _tree.register_waited(self._popen.pid)

    async def stop(self) -> None:
        """Tell the watchdog the server exits cleanly, and reap it."""
        try:
            os.write(self._write_end, _CLEAN_EXIT)
        except OSError:
            pass
        os.close(self._write_end)
        with trio.CancelScope(shield=True), trio.move_on_after(_REAP_SECONDS):
            pidfd = os.pidfd_open(self._popen.pid)
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGKILL)
            self._popen.wait()
        _tree.unregister_waited(self._popen.pid)

