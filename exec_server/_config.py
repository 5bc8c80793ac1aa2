"""The server's configuration: every limit in one frozen object, and every setting an operator
can make — as a flag, as a key of the ``--config`` TOML file, or both.

Precedence: built-in default < config file < flag. A setting's file key is its flag's name
without the dashes (``--retain-bytes`` ↔ ``retain-bytes = 8388608``). Every ``ServerConfig``
limit has a setting of the same name (generated from the class, so a new limit cannot lack
one). ``reloadable`` settings take effect on SIGHUP for new connections; the others need a
restart (a reload that changes one says so in the log).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from protocol import SandboxMode

from .sandbox import SandboxSettings, _ceilings

MIB: Final = 1024 * 1024
SERVER_NAME: Final = "exec-server"
_FALLBACK_VERSION: Final = "0.2.0"


def _version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


SERVER_VERSION: Final = _version()


@attrs.frozen(kw_only=True)
class ServerConfig:
    """What an operator sets (``exec-server serve`` flags and config keys map onto these fields)."""

    token: str
    sandbox: SandboxSettings = attrs.Factory(SandboxSettings)
    max_message_bytes: int = 16 * MIB
    max_processes_per_session: int = 1024
    max_sessions: int = 4096
    retain_bytes: int = 8 * MIB
    retain_total_bytes: int = 256 * MIB
    retain_after_close: float = 300.0
    detached_session_ttl: float = 30.0
    slow_consumer_timeout: float = 10.0
    shutdown_grace: float = 10.0
    max_tombstones: int = 4096
    # Outbound queue per connection (see _outbound.py): a count bound for all messages and
    # a byte bound for queued output.
    outbound_queue_messages: int = 4096
    outbound_queue_bytes: int = 16 * MIB
    # process/write payload held by one connection's calls in flight (more: -32005).
    max_pending_write_bytes: int = 16 * MIB
    # argv and env of the records a session holds (more: process/start is -32005).
    max_session_command_bytes: int = 16 * MIB
    max_concurrent_requests: int = 256
    # Keepalive: a ping every `ping_interval` seconds (0: none); no pong within
    # `ping_timeout` seconds is a dropped connection (the session detaches).
    ping_interval: float = attrs.field(default=15.0, validator=attrs.validators.ge(0))
    ping_timeout: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    # Detached sessions one peer (remote address) may hold; beyond it its oldest end.
    max_detached_per_peer: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    # Files holding the server's secrets (token files, the TLS key): what a sandboxed command
    # must never be able to read, whatever their mode. Filled in by the CLI.
    secret_paths: tuple[str, ...] = ()


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line for the operator."""


@attrs.frozen(kw_only=True)
class Setting:
    """One operator setting: its flag ``--<key>`` and its config-file key ``<key>``."""

    key: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeatable: bool = False
    flag_only: bool = False
    is_switch: bool = False
    reloadable: bool = False

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")


def _octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise ValueError(f"{text!r} is not an octal mode") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"{text!r} is not a permission mode")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive integer")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a finite number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise ValueError(f"{text!r} must be a number > 0")
    return value


def _size(text: str) -> int:
    try:
        return _ceilings.parse_size(str(text))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


_LIMIT_HELP: Final = {
    "max_message_bytes": "largest message the server reads (bytes)",
    "max_processes_per_session": "commands a session may hold at once",
    "max_sessions": "sessions the server holds at once",
    "retain_bytes": "output retained per command (bytes)",
    "retain_total_bytes": "output retained in all (bytes)",
    "retain_after_close": "seconds a closed command's record is kept",
    "detached_session_ttl": "seconds a detached session lives",
    "slow_consumer_timeout": "seconds a stuck bestEffort writer is tolerated",
    "shutdown_grace": "seconds running commands get at shutdown",
    "max_tombstones": "released ids a session remembers",
    "outbound_queue_messages": "messages queued per connection",
    "outbound_queue_bytes": "output bytes queued per connection",
    "max_concurrent_requests": "reads/writes in flight per connection",
    "ping_interval": "seconds between pings of every connection (0: none)",
    "ping_timeout": "seconds a pong may take before the connection counts as dropped",
    "max_detached_per_peer": "detached sessions one remote address may hold (its oldest end first)",
}
# Limits that are read when a connection or session is made: a reload applies them to new ones.
_RELOADABLE_LIMITS: Final = frozenset(
    {
        "max_message_bytes",
        "max_processes_per_session",
        "max_sessions",
        "retain_bytes",
        "retain_after_close",
        "detached_session_ttl",
        "slow_consumer_timeout",
        "shutdown_grace",
        "max_tombstones",
        "outbound_queue_messages",
        "outbound_queue_bytes",
        "max_concurrent_requests",
    }
)


def _limit_settings() -> tuple[Setting, ...]:
    settings = []
    for field in attrs.fields(ServerConfig):
        # Numeric limits only: a field of another kind gets a hand-written setting.
        if isinstance(field.default, bool) or not isinstance(field.default, (int, float)):
            continue
        kind = _positive_int if isinstance(field.default, int) else _non_negative_float
        settings.append(
            Setting(
                key=field.name.replace("_", "-"),
                parse=kind,
                default=field.default,
                help=_LIMIT_HELP.get(field.name, field.name.replace("_", " ")),
                metavar="N" if kind is _positive_int else "S",
                reloadable=field.name in _RELOADABLE_LIMITS,
            )
        )
    return tuple(settings)


DEFAULT_LISTEN: Final = "ws://127.0.0.1:8765"
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(key="config", parse=Path, default=None, help="TOML file with any of these settings", metavar="PATH", flag_only=True),
    Setting(
        key="listen",
        parse=str,
        default=(DEFAULT_LISTEN,),
        repeatable=True,
        metavar="ADDR",
        help="ws://HOST:PORT, wss://HOST:PORT, unix:/PATH or stdio; repeatable",
    ),
    Setting(key="tls-cert", parse=Path, default=None, metavar="PEM", help="certificate chain for wss://"),
    Setting(key="tls-key", parse=Path, default=None, metavar="PEM", help="private key for wss://"),
    Setting(key="tls-client-ca", parse=Path, default=None, metavar="PEM", help="require client certificates signed by this CA (mutual TLS)"),
    Setting(key="unix-mode", parse=_octal, default=0o600, metavar="MODE", help="mode of unix: sockets (octal)"),
    Setting(key="metrics-listen", parse=str, default=None, metavar="HOST:PORT", help="serve /metrics and /healthz without a token on a separate port"),
    Setting(key="token-file", parse=Path, default=None, metavar="PATH", help="token file (created with mode 0600 if missing)"),
    Setting(key="tokens-file", parse=Path, default=None, metavar="PATH", help="named tokens: 'name token [maxSandbox]' per line (mode 0600)"),
    Setting(key="allow-origin", parse=str, default=(), repeatable=True, metavar="ORIGIN", reloadable=True, help="a browser Origin allowed to connect (repeatable; * for any)"),
    Setting(key="max-pending-handshakes", parse=_positive_int, default=256, metavar="N", reloadable=True, help="connections between accept and an authenticated upgrade"),
    Setting(key="handshake-timeout", parse=_positive_float, default=10.0, metavar="S", reloadable=True, help="seconds a connection has to complete its upgrade"),
    Setting(
        key="sandbox",
        parse=str,
        default=SandboxMode.READ_ONLY.value,
        choices=tuple(mode.value for mode in SandboxMode),
        help="policy for requests that name none (default readOnly)",
    ),
    Setting(key="allow-unsandboxed", parse=_bool, default=False, is_switch=True, help='allow requests for sandbox mode "none"'),
    Setting(key="audit-denials", parse=str, default="auto", choices=("auto", "on", "off"), help="exact denial reports from kernel audit"),
    # The operator's ceilings (sandbox/_ceilings.py): a request beyond one is refused, never narrowed.
    Setting(
        key="max-sandbox",
        parse=str,
        default=SandboxMode.NONE.value,
        choices=tuple(mode.value for mode in SandboxMode),
        help='most permissive mode a request may ask for ("none" still needs --allow-unsandboxed)',
    ),
    Setting(key="writable-roots-within", parse=str, default=(), repeatable=True, metavar="PATH", help="every writable cwd/root of a request must be inside one of these (repeatable)"),
    Setting(key="allow-network", parse=_bool, default=False, is_switch=True, help="allow requests for network: true"),
    Setting(key="limit-memory", parse=_size, default=None, metavar="BYTES", help="default and ceiling of memoryBytes (K/M/G suffixes)"),
    Setting(key="limit-pids", parse=_positive_int, default=None, metavar="N", help="default and ceiling of pids"),
    Setting(key="limit-cpu-seconds", parse=_positive_int, default=None, metavar="S", help="default and ceiling of cpuSeconds"),
    Setting(key="limit-file-size", parse=_size, default=None, metavar="BYTES", help="default and ceiling of fileSizeBytes (K/M/G suffixes)"),
    Setting(key="limit-open-files", parse=_positive_int, default=None, metavar="N", help="default and ceiling of openFiles"),
    *_limit_settings(),
    Setting(key="log-level", parse=str.upper, default="INFO", choices=_LOG_LEVELS, reloadable=True, help="what is logged"),
    Setting(key="log-format", parse=str, default="text", choices=("text", "json"), reloadable=True, help="text lines or one JSON object per line"),
)
SETTINGS_BY_KEY: Final = {setting.key: setting for setting in SETTINGS}


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, checked against ``SETTINGS``.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key, a value of the wrong type.
    """
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, raw in document.items():
        setting = SETTINGS_BY_KEY.get(key)
        if setting is None or setting.flag_only:
            raise ConfigError(f"config {path}: unknown key {key!r}")
        values[key] = _from_file(setting, raw, path)
    return values


def _from_file(setting: Setting, raw: Any, path: Path) -> Any:
    where = f"config {path}: {setting.key}"
    if setting.repeatable:
        items = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where}: expected a string or a list of strings")
        return tuple(items)
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"{where}: expected a single value")
    if setting.is_switch:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false")
        return raw
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: expected a {type(setting.default).__name__ if setting.default is not None else 'string'}")
    try:
        value = setting.parse(raw if not isinstance(raw, (int, float)) or setting.parse in (int, float) else str(raw))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if setting.choices is not None and value not in setting.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(setting.choices)}")
    return value


def effective(file_values: Mapping[str, Any], flag_values: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting's value: the flag's if given, else the file's, else the default."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if flag_values.get(setting.key) is not None:
            values[setting.key] = flag_values[setting.key]
        elif setting.key in file_values:
            values[setting.key] = file_values[setting.key]
        else:
            values[setting.key] = setting.default
    return values


def server_config(
    values: Mapping[str, Any], token: str, secret_paths: tuple[str, ...] = (), masked_paths: tuple[str, ...] = ()
) -> ServerConfig:
    """The ``ServerConfig`` of a set of effective values (``secret_paths``: see the field;
    ``masked_paths``: what the sandbox hides, ``SandboxSettings.masked_paths``)."""
    sandbox = values["sandbox"]
    limits = {
        field.name: values[field.name.replace("_", "-")]
        for field in attrs.fields(ServerConfig)
        if field.name not in ("token", "sandbox") and field.name.replace("_", "-") in SETTINGS_BY_KEY
    }
    return ServerConfig(
        token=token,
        sandbox=SandboxSettings(
            default_mode=SandboxMode(sandbox),
            allow_unsandboxed=bool(values["allow-unsandboxed"]) or sandbox == SandboxMode.NONE.value,
            audit_denials=values["audit-denials"],
            masked_paths=masked_paths,
            **_ceilings.settings_from_values(values),
        ),
        secret_paths=secret_paths,
        **limits,
    )


def render_toml(values: Mapping[str, Any]) -> str:
    """``values`` as a config file (what ``exec-server config`` prints)."""
    lines = []
    for setting in SETTINGS:
        if setting.flag_only:
            continue
        value = values.get(setting.key)
        if value is None:
            lines.append(f"# {setting.key} is not set")
            continue
        lines.append(f"{setting.key} = {_toml_value(setting, value)}")
    return "\n".join(lines) + "\n"


def _toml_value(setting: Setting, value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(setting, item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if setting.key == "unix-mode":
        return f'"{value:o}"'
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
