"""The client's file API and ``exec-client cp``, against a real server run as users run it.

The server is ``exec-server serve`` in a subprocess (root, the default ``readOnly`` policy,
the real kernel sandbox), so that ``tracemalloc`` here measures the client alone. Every
behaviour is checked on the three clients with the same names and arguments: ``open_client``
on trio, ``open_client`` on asyncio (its own loop thread), and the sync ``connect``. The
same file layer also drives the real ``codex exec-server`` (Codex's dialect), a transfer rides
out a connection cut (a real proxy), and a server run by the non-root ``tester`` user refuses
that user's own file outside the workspace.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import anyio.from_thread
import attrs
import pytest
import trio

import exec_client
from codex_peer import codex_binary, codex_exec_server
from exec_client import _files
from exec_client._errors import ServerError
from exec_server.sandbox import detect
from protocol import _codex as c
from rawclient import no_leftover_processes  # noqa: F401  (fixture used by name)
from test_cli import exec_client as run_cli, one_line
from test_delivery_support import StallProxy
from test_sandbox_view import IS_ROOT, TEST_USER, _user_exists, user_server

KERNEL: Final = detect()
BIG_BYTES: Final = 20 * 1024 * 1024  # 20 blocks of download, 5 pieces of upload
TIMEOUT: Final = 60

pytestmark = pytest.mark.skipif(KERNEL.landlock_abi < 3, reason="kernel without Landlock ABI 3")


def _scratch(prefix: str, mode: int = 0o755) -> Path:
    # Under /tmp: pytest's tmp_path sits in a 0700 directory.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    return path


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = _scratch("exec-files-ws-")
    (path / ".git").mkdir()
    (path / ".git" / "config").write_text("[core]\n")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local_dir() -> Iterator[Path]:
    path = _scratch("exec-files-local-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@attrs.frozen
class Served:
    url: str
    token: str
    token_file: Path


@pytest.fixture
async def served(no_leftover_processes: None) -> AsyncIterator[Served]:
    """``exec-server serve`` (readOnly by default) on a loopback port; its token outside the workspace."""
    config = _scratch("exec-files-config-", 0o700)
    token_file = config / "token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    argv = [sys.executable, "-m", "exec_server", "serve", "--listen", "ws://127.0.0.1:0", "--token-file", str(token_file)]
    argv += ["--sandbox", "readOnly", "--audit-denials", "off", "--log-level", "WARNING"]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
    assert process.stdout is not None
    try:
        url = b""
        with trio.fail_after(TIMEOUT):
            while not url.endswith(b"\n"):
                chunk = await process.stdout.receive_some(256)
                assert chunk, "the server exited before printing its URL"
                url += chunk
        yield Served(url.decode().strip(), token_file.read_text().strip(), token_file)
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
            shutil.rmtree(config, ignore_errors=True)


# --- the three clients, one interface: call(name, *args) ------------------------------------


class Files(Protocol):
    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


@asynccontextmanager
async def trio_files(url: str, token: str) -> AsyncIterator[Files]:
    async with exec_client.open_client(url, token=token) as client:

        async def call(name: str, *args: Any, **kwargs: Any) -> Any:
            return await getattr(client, name)(*args, **kwargs)

        yield call


@asynccontextmanager
async def asyncio_files(url: str, token: str) -> AsyncIterator[Files]:
    portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
    portal = await trio.to_thread.run_sync(portal_cm.__enter__)
    try:
        client_cm = portal.wrap_async_context_manager(exec_client.open_client(url, token=token))
        client = await trio.to_thread.run_sync(client_cm.__enter__)

        async def call(name: str, *args: Any, **kwargs: Any) -> Any:
            async def on_asyncio() -> Any:
                asyncio.get_running_loop()  # this really runs on asyncio
                return await getattr(client, name)(*args, **kwargs)

            return await trio.to_thread.run_sync(portal.call, on_asyncio)

        try:
            yield call
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(client_cm.__exit__, None, None, None)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(portal_cm.__exit__, None, None, None)


@asynccontextmanager
async def sync_files(url: str, token: str) -> AsyncIterator[Files]:
    client = await trio.to_thread.run_sync(lambda: exec_client.connect(url, token=token))
    try:

        async def call(name: str, *args: Any, **kwargs: Any) -> Any:
            return await trio.to_thread.run_sync(lambda: getattr(client, name)(*args, **kwargs))

        yield call
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(client.close)


FLAVORS: Final = {"trio": trio_files, "asyncio": asyncio_files, "sync": sync_files}


@pytest.fixture(params=sorted(FLAVORS))
def flavor(request: pytest.FixtureRequest) -> Any:
    return FLAVORS[request.param]


def writable(*roots: Path) -> dict[str, Any]:
    return {"mode": "workspaceWrite", "writableRoots": [str(root) for root in roots]}


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def one_line_error(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


# --- behaviour, on all three clients ---------------------------------------------------------


async def test_small_files_round_trip_and_the_directory_operations(flavor: Any, served: Served, workspace: Path) -> None:
    sandbox = writable(workspace)
    with trio.fail_after(TIMEOUT):
        async with flavor(served.url, served.token) as files:
            await files("write_file", f"{workspace}/a.bin", bytes(range(256)) * 3, sandbox=sandbox)
            await files("write_file", f"{workspace}/é.txt", "héllo\n", sandbox=sandbox)  # a str is UTF-8
            await files("write_file", f"{workspace}/empty", b"", sandbox=sandbox)
            five = os.urandom(5 * 1024 * 1024 + 1)  # more than one upload piece: writeFile + appendFile
            await files("write_file", f"{workspace}/five", memoryview(five), sandbox=sandbox)
            five_back = await files("read_file", f"{workspace}/five")
            await files("remove", f"{workspace}/five", sandbox=sandbox)
            read = await files("read_file", f"{workspace}/a.bin")
            text = await files("read_file", workspace / "é.txt")  # a PathLike works too
            empty = await files("read_file", f"{workspace}/empty")
            stat = await files("stat", f"{workspace}/a.bin")
            directory = await files("stat", str(workspace))
            listing = await files("list_dir", str(workspace))
            (workspace / "tree" / "deep").mkdir(parents=True)
            (workspace / "tree" / "deep" / "f").write_text("x")
            await files("remove", f"{workspace}/a.bin", sandbox=sandbox)
            with pytest.raises(exec_client.RemoteFileError) as not_empty:
                await files("remove", f"{workspace}/tree", sandbox=sandbox)
            await files("remove", f"{workspace}/tree", recursive=True, sandbox=sandbox)
            after = await files("list_dir", str(workspace))
    assert read == bytes(range(256)) * 3 and text == "héllo\n".encode() and empty == b"" and five_back == five
    assert (stat.size, stat.is_file, stat.is_dir, stat.is_symlink) == (768, True, False, False)
    assert stat.modified_at_ms > 0 and stat.path == f"{workspace}/a.bin"
    assert (directory.is_dir, directory.is_file) == (True, False)
    assert [(e.name, e.is_dir, e.is_file) for e in listing] == [
        (".git", True, False), ("a.bin", False, True), ("empty", False, True), ("é.txt", False, True)
    ]
    assert not_empty.value.errno == errno.ENOTEMPTY and "not empty" in one_line_error(not_empty.value)
    assert [e.name for e in after] == [".git", "empty", "é.txt"]
    assert not (workspace / "a.bin").exists() and not (workspace / "tree").exists()


async def test_a_20_mib_file_streams_both_ways_byte_exact_in_bounded_memory(
    flavor: Any, served: Served, workspace: Path, local_dir: Path
) -> None:
    source = local_dir / "big.bin"
    with source.open("wb") as out:
        for _ in range(BIG_BYTES // (1 << 20)):
            out.write(os.urandom(1 << 20))
    back = local_dir / "back.bin"
    with trio.fail_after(TIMEOUT * 2):
        async with flavor(served.url, served.token) as files:
            # 20 MiB is more than the server takes in one message (16 MiB): only pieces get through.
            sent = await files("upload", source, f"{workspace}/big.bin", sandbox=writable(workspace))
            tracemalloc.start()
            try:
                received = await files("download", f"{workspace}/big.bin", back)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            stat = await files("stat", f"{workspace}/big.bin")
            with pytest.raises(exec_client.RemoteFileError) as too_big:
                await files("read_file", f"{workspace}/big.bin", max_bytes=BIG_BYTES - 1)
    assert sent == received == stat.size == BIG_BYTES
    assert digest(workspace / "big.bin") == digest(source) == digest(back)
    # Streaming: the client never held the file, only a block or two of it.
    assert peak < BIG_BYTES // 2, f"download peak {peak} bytes for a {BIG_BYTES}-byte file"
    assert too_big.value.errno == errno.EFBIG and "max_bytes" in one_line_error(too_big.value)


def make_tree(root: Path) -> dict[str, bytes]:
    """A small tree: nested and empty directories, an empty file, a symlink to a file."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    files = {"top.txt": b"top\n", "a/one.bin": os.urandom(70_000), "a/b/deep.txt": b"deep", "a/b/nothing": b""}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "link").symlink_to("top.txt")
    return files


def tree_of(root: Path) -> tuple[dict[str, bytes], set[str]]:
    found = {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}
    return found, {str(path.relative_to(root)) for path in root.rglob("*") if path.is_dir()}


async def test_a_tree_goes_up_and_comes_back_recursively(flavor: Any, served: Served, workspace: Path, local_dir: Path) -> None:
    files = make_tree(local_dir / "src")
    with trio.fail_after(TIMEOUT):
        async with flavor(served.url, served.token) as files_api:
            sent = await files_api("upload", local_dir / "src", f"{workspace}/tree", recursive=True, sandbox="workspaceWrite")
            again = await files_api("upload", local_dir / "src", f"{workspace}/tree", recursive=True, sandbox="workspaceWrite")
            received = await files_api("download", f"{workspace}/tree", local_dir / "back", recursive=True)
            await files_api("make_dir", f"{workspace}/made/deeper", parents=True, sandbox=writable(workspace))
            with pytest.raises(IsADirectoryError):  # without recursive a directory is refused
                await files_api("upload", local_dir / "src", f"{workspace}/flat", sandbox="workspaceWrite")
    expected = {**files, "link": b"top\n"}  # a symlink is followed, as scp -r does
    assert tree_of(workspace / "tree") == tree_of(local_dir / "back") == (expected, {"a", "a/b", "empty-dir"})
    assert sent == again == received == sum(map(len, expected.values()))
    assert (workspace / "made" / "deeper").is_dir() and not (workspace / "flat").exists()


async def test_transfers_ride_out_a_connection_cut(served: Served, workspace: Path, local_dir: Path, nursery: trio.Nursery) -> None:
    proxy = await nursery.start(StallProxy(int(served.url.rsplit(":", 1)[1])).serve)
    size = 12 * 1024 * 1024  # 12 blocks down, 3 pieces up
    (workspace / "down.bin").write_bytes(os.urandom(size))
    (local_dir / "up.bin").write_bytes(os.urandom(size))

    async def cut_when(reached: Any) -> None:
        while not reached():
            await trio.sleep(0.01)
        proxy.stall()  # nothing more reaches the client: the transfer cannot end before the cut
        proxy.cut()
        proxy.flow()

    def uploaded() -> int:
        try:
            return (workspace / "up.bin").stat().st_size
        except FileNotFoundError:
            return 0

    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(proxy.url, token=served.token) as client:
            async with trio.open_nursery() as cutter:
                cutter.start_soon(cut_when, lambda: proxy.forwarded_down > 3 * 1024 * 1024)
                got = await client.download(f"{workspace}/down.bin", local_dir / "down.bin")
            after_download = client.resumes
            async with trio.open_nursery() as cutter:
                cutter.start_soon(cut_when, lambda: uploaded() >= _files.MAX_UPLOAD_PIECE_BYTES)
                sent = await client.upload(local_dir / "up.bin", f"{workspace}/up.bin", sandbox=writable(workspace))
            resumes = client.resumes
    assert (after_download, resumes, proxy.accepted) == (1, 2, 3)
    assert got == sent == size
    assert digest(local_dir / "down.bin") == digest(workspace / "down.bin")
    assert digest(workspace / "up.bin") == digest(local_dir / "up.bin")


async def test_a_write_outside_the_writable_roots_is_refused_with_the_servers_errno(
    flavor: Any, served: Served, workspace: Path, local_dir: Path
) -> None:
    victim = Path("/etc") / f"exec-files-{secrets.token_hex(4)}"
    (local_dir / "f").write_bytes(b"x")
    refused: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with flavor(served.url, served.token) as files:
            # The server's default policy (readOnly): nothing is writable, not even as root.
            for call in (
                files("write_file", str(victim), b"x"),
                files("write_file", f"{workspace}/f", b"x"),
                files("upload", local_dir / "f", str(victim)),
                files("write_file", str(victim), b"x", sandbox=writable(workspace)),  # /etc is outside
                files("write_file", f"{workspace}/.git/config", b"x", sandbox=writable(workspace)),  # carve-out
                files("remove", f"{workspace}/.git/config", sandbox=writable(workspace)),
            ):
                with pytest.raises(exec_client.RemotePermissionError) as caught:
                    await call
                refused.append(caught.value)
            await files("write_file", f"{workspace}/f", b"inside", sandbox=writable(workspace))
    for exc in refused:
        assert isinstance(exc, PermissionError) and exc.errno == errno.EROFS, exc
        assert one_line_error(exc).endswith("Read-only file system (os error 30)")
    assert refused[0].filename == str(victim) and str(refused[0]).startswith(f"{victim}: ")
    assert not victim.exists() and (workspace / ".git" / "config").read_text() == "[core]\n"
    assert (workspace / "f").read_bytes() == b"inside"


async def test_a_missing_path_is_not_found_everywhere(flavor: Any, served: Served, workspace: Path, local_dir: Path) -> None:
    missing = f"{workspace}/nope"
    caught: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with flavor(served.url, served.token) as files:
            for name, args in (
                ("read_file", (missing,)),
                ("stat", (missing,)),
                ("list_dir", (missing,)),
                ("download", (missing, local_dir / "x")),
                ("remove", (missing,)),
            ):
                with pytest.raises(exec_client.RemoteFileNotFound) as error:
                    await files(name, *args)
                caught.append(error.value)
            with pytest.raises(exec_client.RemoteFileNotFound) as no_directory:  # the implicit writable root is missing
                await files("write_file", f"{workspace}/no/such/dir/f", b"x", sandbox="workspaceWrite")
            with pytest.raises(ValueError, match="absolute"):
                await files("read_file", "relative/path")
            with pytest.raises(FileNotFoundError):  # the local side: the OS's own error
                await files("upload", local_dir / "absent", f"{workspace}/x", sandbox=writable(workspace))
    for exc in caught:
        assert isinstance(exc, FileNotFoundError) and exc.errno == errno.ENOENT
        assert one_line_error(exc) == f"{missing}: No such file or directory (os error 2)"
    assert not (local_dir / "x").exists()  # a failed download creates nothing locally
    assert no_directory.value.errno == errno.ENOENT and one_line_error(no_directory.value).startswith(
        f"{workspace}/no/such/dir/f: No such file or directory"
    )


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the server as the test user")
async def test_a_non_root_server_refuses_the_users_own_file_outside_the_workspace(no_leftover_processes: None) -> None:
    if not _user_exists(TEST_USER) or not os.path.exists("/usr/bin/python3"):
        pytest.skip(f"needs a user {TEST_USER!r} (useradd -m {TEST_USER}) and /usr/bin/python3")
    import pwd

    entry = pwd.getpwnam(TEST_USER)
    home = Path(entry.pw_dir)
    victim = home / f"exec-files-victim-{secrets.token_hex(4)}"
    victim.write_text("mine\n")
    os.chown(victim, entry.pw_uid, entry.pw_gid)
    workspace = _scratch("exec-files-user-ws-")
    os.chown(workspace, entry.pw_uid, entry.pw_gid)
    try:
        with trio.fail_after(TIMEOUT * 2):
            async with user_server(home) as (client, _token):
                sandbox = writable(workspace)
                await client.write_file(f"{workspace}/ok", b"ok", sandbox=sandbox)
                with pytest.raises(exec_client.RemotePermissionError) as own_file:  # its uid could, the sandbox may not
                    await client.write_file(str(victim), b"overwritten", sandbox=sandbox)
                with pytest.raises(exec_client.RemotePermissionError) as etc:
                    await client.write_file("/etc/exec-files-user", b"x", sandbox=sandbox)
                read_back = await client.read_file(str(victim))
        assert (workspace / "ok").read_bytes() == b"ok" and (workspace / "ok").stat().st_uid == entry.pw_uid
        assert own_file.value.errno == errno.EROFS, own_file.value
        assert etc.value.errno in (errno.EROFS, errno.EACCES), etc.value
        assert read_back == b"mine\n" and victim.read_text() == "mine\n"
    finally:
        victim.unlink(missing_ok=True)
        shutil.rmtree(workspace, ignore_errors=True)


async def test_the_append_extension_appends_only_at_the_exact_size_and_never_creates(served: Served, workspace: Path) -> None:
    sandbox = _files.sandbox_profile(writable(workspace), str(workspace))
    target = workspace / "log"

    def append(path: Path, data: bytes, offset: int) -> Any:
        import base64

        params = c.AppendFileParams(path=c.uri_from_path(str(path)), data_base64=base64.b64encode(data).decode(), offset=offset, sandbox=sandbox)
        return client.call(params, "fs/appendFile", raw=True)

    with trio.fail_after(TIMEOUT):
        async with exec_client.open_client(served.url, token=served.token) as client:
            await client.write_file(str(target), b"abc", sandbox=writable(workspace))
            assert await append(target, b"def", 3) == {}
            with pytest.raises(ServerError) as resent:  # the same piece again: refused, not doubled
                await append(target, b"def", 3)
            with pytest.raises(ServerError) as missing:
                await append(workspace / "new", b"x", 0)
            with pytest.raises(ServerError) as probe:  # what the client's capability probe sees
                await append(target, b"", -1)
            with pytest.raises(ServerError) as outside:
                await append(Path("/etc/hostname"), b"x", os.stat("/etc/hostname").st_size)
    assert target.read_bytes() == b"abcdef"
    assert resent.value.code == -32600 and "is 6 bytes, not 3" in resent.value.message
    assert missing.value.code == -32009 and not (workspace / "new").exists()
    assert probe.value.code == -32602
    assert outside.value.code == -32010 and outside.value.data == {"errno": "EROFS"}


# --- the same file layer against Codex's own exec-server ----------------------------------------


async def test_the_file_layer_drives_codex_exec_server_unchanged(tmp_path: Path, local_dir: Path, no_leftover_processes: None) -> None:
    codex_binary()  # skips (one line) only without npm
    workspace = _scratch("exec-files-codex-", 0o777)
    payload = os.urandom(3 * 1024 * 1024 + 5)  # several blocks
    (local_dir / "big").write_bytes(os.urandom(_files.MAX_UPLOAD_PIECE_BYTES + 1))
    (workspace / "t" / "sub").mkdir(parents=True)
    (workspace / "t" / "sub" / "x").write_bytes(b"x")
    victim = Path("/etc") / f"exec-files-codex-{secrets.token_hex(4)}"
    try:
        with trio.fail_after(TIMEOUT):
            async with codex_exec_server(tmp_path / "codex-home") as url, exec_client.open_client(url) as files:
                assert files.dialect == "codex"
                sandbox = writable(workspace)
                await files.write_file(f"{workspace}/p.bin", payload, sandbox=sandbox)
                read = await files.read_file(f"{workspace}/p.bin")
                got = await files.download(f"{workspace}/p.bin", local_dir / "p.bin")
                stat = await files.stat(f"{workspace}/p.bin")
                names = [entry.name for entry in await files.list_dir(str(workspace))]
                tree = await files.download(f"{workspace}/t", local_dir / "t", recursive=True)
                await files.make_dir(f"{workspace}/d", sandbox=sandbox)
                await files.remove(f"{workspace}/d", sandbox=sandbox)
                with pytest.raises(exec_client.RemotePermissionError) as refused:
                    await files.write_file(str(victim), b"x", sandbox="readOnly")
                with pytest.raises(exec_client.RemotePermissionError) as outside:
                    await files.write_file(str(victim), b"x", sandbox=sandbox)
                with pytest.raises(exec_client.RemoteFileNotFound) as missing:
                    await files.read_file(f"{workspace}/nope")
                with pytest.raises(exec_client.RemoteFileError) as too_big:  # Codex has no fs/appendFile
                    await files.upload(local_dir / "big", f"{workspace}/big", sandbox=sandbox)
        assert read == payload and got == stat.size == len(payload) and (local_dir / "p.bin").read_bytes() == payload
        assert sorted(names) == ["p.bin", "t"] and tree == 1 and (local_dir / "t" / "sub" / "x").read_bytes() == b"x"
        assert not (workspace / "d").exists()
        assert refused.value.errno == outside.value.errno == errno.EROFS and not victim.exists()
        assert str(missing.value) == f"{workspace}/nope: No such file or directory (os error 2)"
        assert too_big.value.errno == errno.EFBIG and "fs/appendFile" in str(too_big.value)
        assert not (workspace / "big").exists()  # refused before anything was written
    finally:
        victim.unlink(missing_ok=True)
        shutil.rmtree(workspace, ignore_errors=True)


# --- the Codex dialect's error shapes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "kind", "number"),
    [
        (-32603, "Read-only file system (os error 30)", exec_client.RemotePermissionError, errno.EROFS),
        (-32603, "Permission denied (os error 13)", exec_client.RemotePermissionError, errno.EACCES),
        (-32004, "No such file or directory (os error 2)", exec_client.RemoteFileNotFound, errno.ENOENT),
        (-32009, "unknown file handle `h`", exec_client.RemoteFileNotFound, errno.ENOENT),
        (-32600, "path `/d` is not a file", exec_client.RemoteFileError, None),
    ],
)
def test_codex_and_our_error_shapes_map_to_the_same_exceptions(code: int, message: str, kind: type, number: int | None) -> None:
    error = _files.file_error(ServerError.from_error(code, message), "/p")
    assert type(error) is kind and isinstance(error, OSError) and error.errno == number
    assert str(error) == f"/p: {message}"


def test_errors_that_are_not_about_the_file_pass_through() -> None:
    unavailable = ServerError.from_error(-32006, "sandbox unavailable: mode none is not allowed")
    assert _files.file_error(unavailable, "/p") is unavailable


# --- exec-client cp ---------------------------------------------------------------------------


def cp_env(served: Served) -> dict[str, str]:
    return {"EXEC_SERVER_URL": served.url, "EXEC_SERVER_TOKEN_FILE": str(served.token_file)}


async def test_cp_uploads_a_local_file_to_a_remote_path_and_into_a_directory(
    served: Served, workspace: Path, local_dir: Path
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    (local_dir / "blob").write_bytes(payload)
    with trio.fail_after(TIMEOUT):
        refused = await run_cli(["cp", str(local_dir / "blob"), f":{workspace}/blob"], env=cp_env(served), home=local_dir)
        done = await run_cli(
            ["cp", "--sandbox", "workspaceWrite", str(local_dir / "blob"), f":{workspace}/blob"], env=cp_env(served), home=local_dir
        )
        (workspace / "sub").mkdir()
        into = await run_cli(
            ["cp", "--sandbox", "workspaceWrite", str(local_dir / "blob"), f":{workspace}/sub"], env=cp_env(served), home=local_dir
        )
        directory = await run_cli(["cp", str(local_dir), f":{workspace}/x"], env=cp_env(served), home=local_dir)
        both_local = await run_cli(["cp", str(local_dir / "blob"), "elsewhere"], env=cp_env(served), home=local_dir)
    assert refused.returncode == 1
    assert one_line(refused.stderr) == f"exec-client: cp: cannot create regular file ':{workspace}/blob': Read-only file system (os error 30)"
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert (workspace / "blob").read_bytes() == payload
    assert into.returncode == 0 and (workspace / "sub" / "blob").read_bytes() == payload
    assert directory.returncode == 1 and "omitting directory" in one_line(directory.stderr)
    assert both_local.returncode == 2 and "exactly one of SOURCE and DEST must be remote" in one_line(both_local.stderr)


async def test_cp_r_copies_a_directory_both_ways(served: Served, workspace: Path, local_dir: Path) -> None:
    files = make_tree(local_dir / "src")
    (workspace / "dest").mkdir()
    env = cp_env(served)
    with trio.fail_after(TIMEOUT):
        up = await run_cli(["cp", "-r", "--sandbox", "workspaceWrite", str(local_dir / "src"), f":{workspace}/dest"], env=env, home=local_dir)
        down = await run_cli(["cp", "-r", f":{workspace}/dest/src", str(local_dir / "back")], env=env, home=local_dir)
        refused = await run_cli(["cp", "-r", str(local_dir / "src"), f":{workspace}/ro"], env=env, home=local_dir)
    assert (up.returncode, up.stderr, down.returncode, down.stderr) == (0, b"", 0, b"")
    expected = ({**files, "link": b"top\n"}, {"a", "a/b", "empty-dir"})
    assert tree_of(workspace / "dest" / "src") == tree_of(local_dir / "back") == expected  # into the existing dest
    assert refused.returncode == 1
    assert one_line(refused.stderr) == f"exec-client: cp: cannot create ':{workspace}/ro': Read-only file system (os error 30)"


async def test_cp_downloads_a_remote_file_and_fails_like_cp(served: Served, workspace: Path, local_dir: Path) -> None:
    payload = os.urandom(2 * 1024 * 1024 + 3)
    (workspace / "remote.bin").write_bytes(payload)
    with trio.fail_after(TIMEOUT):
        done = await run_cli(["cp", f":{workspace}/remote.bin", str(local_dir / "here.bin")], env=cp_env(served), home=local_dir)
        into = await run_cli(["cp", f":{workspace}/remote.bin", str(local_dir)], env=cp_env(served), home=local_dir)
        missing = await run_cli(["cp", f":{workspace}/nope", str(local_dir / "n")], env=cp_env(served), home=local_dir)
        directory = await run_cli(["cp", f":{workspace}", str(local_dir / "d")], env=cp_env(served), home=local_dir)
        relative = await run_cli(["cp", ":relative", str(local_dir / "r")], env=cp_env(served), home=local_dir)
        unreachable = await run_cli(
            ["cp", f":{workspace}/remote.bin", str(local_dir / "u")],
            env={"EXEC_SERVER_URL": "ws://127.0.0.1:9", "EXEC_SERVER_TOKEN": "x"},
            home=local_dir,
        )
    assert (done.returncode, done.stderr) == (0, b"")
    assert (local_dir / "here.bin").read_bytes() == payload and (local_dir / "remote.bin").read_bytes() == payload
    assert missing.returncode == 1
    assert one_line(missing.stderr) == f"exec-client: cp: cannot stat ':{workspace}/nope': No such file or directory (os error 2)"
    assert not (local_dir / "n").exists()
    assert directory.returncode == 1 and one_line(directory.stderr).endswith(f"omitting directory ':{workspace}'")
    assert relative.returncode == 2 and "must be absolute" in one_line(relative.stderr)
    assert unreachable.returncode == 255 and one_line(unreachable.stderr)
