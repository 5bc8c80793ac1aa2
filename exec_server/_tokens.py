"""Who may connect: the bearer tokens, where they come from, and the principal each one names.

Two file forms, checked the same way:

- the *token file* (``--token-file``, default ``~/.config/exec-server/token``): one token, its
  principal is named ``default``;
- the *tokens file* (``--tokens-file``): one ``name token [max-sandbox]`` per line (``#``
  comments and blank lines ignored), so that one host can give CI and agents different powers.
  The optional third column is the most permissive sandbox mode that token's requests may use
  (``readOnly``, ``workspaceWrite`` or ``none``).

A file holding a secret is refused unless it is a regular file (not a symlink) owned by the
server's user, with no group or other permission bits, and every token in it has at least
``MIN_TOKEN_CHARS`` characters. ``TokenStore.reload`` re-reads the files (SIGHUP): new
connections need the new tokens; connections already authenticated keep their principal.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs

from protocol import SandboxMode

TOKEN_ENV: Final = "EXEC_SERVER_TOKEN"
DEFAULT_TOKEN_FILE: Final = Path("~/.config/exec-server/token")
DEFAULT_PRINCIPAL: Final = "default"
MIN_TOKEN_CHARS: Final = 32
# Generated tokens: 32 random bytes, 43 URL-safe characters.
_GENERATED_TOKEN_BYTES: Final = 32
_PRIVATE_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
_MAX_NAME_CHARS: Final = 64


class TokenFileError(ValueError):
    """A token file that must not be used; the message is one line for the operator."""


@attrs.frozen
class Principal:
    """Who an authenticated connection is: the token's name and its own sandbox ceiling."""

    name: str
    max_sandbox: SandboxMode | None = None


@attrs.frozen
class _Credential:
    token: bytes
    principal: Principal


def check_private_file(path: Path) -> None:
    """Refuse a secret-holding file that someone other than the server's user could touch.

    Raises:
        TokenFileError: a symlink, not a regular file, another owner, group/other bits set.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise TokenFileError(f"{path} does not exist") from None
    if stat.S_ISLNK(info.st_mode):
        raise TokenFileError(f"{path} is a symlink; point the option at the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"{path} is not a regular file")
    if info.st_uid != os.geteuid():
        raise TokenFileError(f"{path} is owned by uid {info.st_uid}, not by the server's user (uid {os.geteuid()})")
    if info.st_mode & _PRIVATE_BITS:
        raise TokenFileError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; group and other must have no access (chmod 600)"
        )


def _read_private(path: Path) -> str:
    """Read a checked file without following a symlink swapped in after the check."""
    check_private_file(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, encoding="utf-8", errors="strict") as handle:
        try:
            return handle.read()
        except UnicodeDecodeError:
            raise TokenFileError(f"{path} is not UTF-8 text") from None


def _check_token(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError(f"{where}: the token has {len(token)} characters; at least {MIN_TOKEN_CHARS} are required")
    if not token.isprintable() or any(char.isspace() for char in token):
        raise TokenFileError(f"{where}: the token must be printable with no whitespace")


def parse_tokens_file(text: str, path: Path) -> dict[str, Principal]:
    """``name token [max-sandbox]`` lines → token → principal.

    Raises:
        TokenFileError: a malformed line, a duplicate name or token, a short token.
    """
    entries: dict[str, Principal] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) not in (2, 3):
            raise TokenFileError(f"{where}: expected 'name token [maxSandbox]'")
        name, token = fields[0], fields[1]
        if len(name) > _MAX_NAME_CHARS or not name.isprintable():
            raise TokenFileError(f"{where}: the name must be at most {_MAX_NAME_CHARS} printable characters")
        _check_token(token, where)
        ceiling: SandboxMode | None = None
        if len(fields) == 3:
            try:
                ceiling = SandboxMode(fields[2])
            except ValueError:
                modes = ", ".join(mode.value for mode in SandboxMode)
                raise TokenFileError(f"{where}: max sandbox {fields[2]!r} is not one of {modes}") from None
        if name in names or token in entries:
            raise TokenFileError(f"{where}: duplicate name or token")
        names.add(name)
        entries[token] = Principal(name, ceiling)
    if not entries:
        raise TokenFileError(f"{path} holds no token")
    return entries


def load_token_file(path: Path, *, create: bool) -> str:
    """The one token of a token file; a missing file is created (0600) when ``create``.

    Raises:
        TokenFileError: the checks above; OSError: the file cannot be read or made.
    """
    if create and not os.path.lexists(path):
        token = secrets.token_urlsafe(_GENERATED_TOKEN_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token
    token = _read_private(path).strip()
    if not token:
        raise TokenFileError(f"token file {path} is empty")
    _check_token(token, str(path))
    return token


@attrs.frozen
class TokenSource:
    """Where the tokens come from; ``load`` reads them (again, on SIGHUP)."""

    env_token: str | None = None
    token_file: Path | None = None
    tokens_file: Path | None = None
    create: bool = True

    def load(self) -> dict[str, Principal]:
        """token → principal.

        Raises:
            TokenFileError, OSError: as for the files above.
        """
        entries: dict[str, Principal] = {}
        if self.tokens_file is not None:
            entries.update(parse_tokens_file(_read_private(self.tokens_file), self.tokens_file))
        if self.env_token is not None:
            _check_token(self.env_token, TOKEN_ENV)
            entries[self.env_token] = Principal(DEFAULT_PRINCIPAL)
        elif self.token_file is not None or self.tokens_file is None:
            path = (self.token_file or DEFAULT_TOKEN_FILE).expanduser()
            entries[load_token_file(path, create=self.create)] = Principal(DEFAULT_PRINCIPAL)
        return entries

    def files(self) -> list[Path]:
        """The files read (what a sandboxed command must never see)."""
        found = [] if self.tokens_file is None else [self.tokens_file]
        if self.env_token is None and (self.token_file is not None or self.tokens_file is None):
            found.append((self.token_file or DEFAULT_TOKEN_FILE).expanduser())
        return found


class TokenStore:
    """The tokens in force; compared in constant time, replaced whole on reload."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        self._credentials: tuple[_Credential, ...] = ()
        self.replace(entries)

    @classmethod
    def single(cls, token: str) -> TokenStore:
        return cls({token: Principal(DEFAULT_PRINCIPAL)})

    def replace(self, entries: Mapping[str, Principal]) -> None:
        if not entries:
            raise TokenFileError("no token configured")
        self._credentials = tuple(_Credential(token.encode(), principal) for token, principal in entries.items())

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of ``presented``, or None. Every credential is compared (no early exit)."""
        if presented is None:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        for credential in self._credentials:
            if hmac.compare_digest(credential.token, candidate):
                found = credential.principal
        return found

    @property
    def names(self) -> list[str]:
        return [credential.principal.name for credential in self._credentials]
