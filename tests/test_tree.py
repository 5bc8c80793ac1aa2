"""Signalling a command's tree never reaches a process that merely reuses its numbers."""

from __future__ import annotations

import os
import signal
import subprocess

from exec_server import _tree


def test_a_reaped_commands_pid_and_group_are_not_trusted() -> None:
    # An unrelated group leader stands in for a process that got the reaped command's pid.
    stranger = subprocess.Popen(["sleep", "30"], process_group=0)
    try:
        assert not _tree.signal_tree(stranger.pid, "no-such-marker", signal.SIGTERM, reaped=True)
        assert stranger.poll() is None
        # The same call for a command not yet reaped does use its group.
        assert _tree.signal_tree(stranger.pid, "no-such-marker", signal.SIGTERM, reaped=False)
        assert stranger.wait(timeout=10) == -signal.SIGTERM
    finally:
        if stranger.poll() is None:
            stranger.kill()
            stranger.wait()


def test_a_reaped_commands_group_is_signalled_while_a_marked_member_holds_it() -> None:
    marker = "test-tree:marker"
    env = dict(os.environ, **{_tree.TREE_MARKER_VAR: marker})
    # A member of the group whose root is gone: here the group leader is our own child, so
    # it is found by its marker like an adopted orphan would be.
    member = subprocess.Popen(["sleep", "30"], process_group=0, env=env)
    _tree.register_waited(member.pid)
    try:
        assert _tree.signal_tree(member.pid, marker, signal.SIGTERM, reaped=True, group_only=True)
        assert member.wait(timeout=10) == -signal.SIGTERM
    finally:
        _tree.unregister_waited(member.pid)
        if member.poll() is None:
            member.kill()
            member.wait()
