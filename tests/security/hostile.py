"""A seeded generator of hostile messages for the fuzz test.

Every message starts from a well-formed call of one of the protocol's methods, so that it
gets past the envelope checks and into the converter, the validators and the methods
themselves; then one to three mutations are applied: a field dropped, added, or replaced by
a value of the wrong type, a huge number, a deep nesting, a long or invalid string; the
envelope bent; or the text itself cut, padded, garbled or given JSON's edge cases.

Commands the mutations can start are harmless by construction: ``argv[0]`` is one of a
few programs that do nothing dangerous, or a name that exists nowhere.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any, Final

PROCESS_IDS: Final = ("p0", "p1", "p2", "cat", "sleepy", "x" * 128, "bad id", "")
PROGRAMS: Final = ("true", "echo", "cat", "sleep", "no-such-program-anywhere", "/no/such/path")


def _templates(cwd: str) -> dict[str, dict[str, Any]]:
    return {
        "initialize": {"clientName": "fuzz", "protocolVersion": 1, "delivery": "bestEffort"},
        "process/start": {
            "processId": "p0",
            "argv": ["echo", "hi"],
            "cwd": cwd,
            "env": {"FUZZ": "1"},
            "inheritEnv": True,
            "pipeStdin": False,
            "timeoutMs": 2000,
            "sandbox": {"mode": "none", "writableRoots": [], "network": False},
            "retainBytes": 65536,
            "retainAfterCloseMs": 1000,
        },
        "process/read": {"processId": "p0", "afterSeq": 0, "maxBytes": 4096, "waitMs": 0},
        "process/write": {"processId": "cat", "chunk": "aGkK", "writeId": "w1", "eof": False},
        "process/signal": {"processId": "sleepy", "signal": "interrupt"},
        "process/terminate": {"processId": "sleepy", "graceMs": 0},
        "process/release": {"processId": "p0"},
        "process/list": {},
        "initialized": {},
    }


class HostileMessages:
    """``next()`` gives one hostile message: a ``str`` (a text frame / line) or ``bytes``."""

    def __init__(self, seed: int, cwd: str) -> None:
        self.rng = random.Random(seed)
        self._templates = _templates(cwd)
        self._ids = 0
        self._mutations: list[Callable[[dict[str, Any]], None]] = [
            self._drop_field,
            self._add_field,
            self._replace_field,
            self._replace_field,
            self._replace_field,
            self._nested_field,
            self._bend_envelope,
        ]

    # --- values --------------------------------------------------------------------------

    def _string(self) -> str:
        rng = self.rng
        choice = rng.randrange(8)
        if choice == 0:
            return ""
        if choice == 1:
            return "\ud800" + "a" * rng.randrange(3)  # a lone surrogate (json.dumps escapes it)
        if choice == 2:
            return "a\x00b"
        if choice == 3:
            return "x" * rng.choice((129, 1000, 70_000))
        if choice == 4:
            return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 12)))
        if choice == 5:
            return rng.choice(("/", "/etc", "..", "relative/path", "$HOME", "=", "A=B"))
        return "".join(rng.choice("abcxyz019._:-[]{},\"\\") for _ in range(rng.randrange(1, 10)))

    def _number(self) -> Any:
        return self.rng.choice(
            (0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 1.5, -0.0, 1e308, 7 * 24 * 3600 * 1000 + 1)
        )

    def _nested(self) -> Any:
        depth = self.rng.choice((2, 10, 63, 64, 65, 200))
        value: Any = self.rng.choice((1, "s", None, {}))
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"k": value}
        return value

    def value(self) -> Any:
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice((True, False))
        if choice in (2, 3):
            return self._number()
        if choice in (4, 5):
            return self._string()
        if choice == 6:
            return [self._string() for _ in range(rng.choice((0, 1, 3)))] if rng.random() < 0.8 else ["s", 1] * 500
        if choice == 7:
            return {self._string(): self._string() for _ in range(rng.choice((0, 1, 5)))}
        return self._nested()

    # --- mutations of a call -----------------------------------------------------------------

    def _drop_field(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        if isinstance(params, dict) and params:
            del params[self.rng.choice(sorted(params))]

    def _add_field(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        if isinstance(params, dict):
            params[self.rng.choice(("bogus", "processid", "ARGV", "__proto__", "limits"))] = self.value()

    def _replace_field(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        if not isinstance(params, dict) or not params:
            return
        key = self.rng.choice(sorted(params))
        if key == "argv" and self.rng.random() < 0.5:
            params[key] = [self.rng.choice(PROGRAMS), *(self._string() for _ in range(self.rng.randrange(3)))]
        elif key == "processId" and self.rng.random() < 0.5:
            params[key] = self.rng.choice(PROCESS_IDS)
        else:
            params[key] = self.value()

    def _nested_field(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        if not isinstance(params, dict):
            return
        for key in ("env", "sandbox", "argv"):
            if key in params and self.rng.random() < 0.5:
                inner = params[key]
                if isinstance(inner, dict) and inner:
                    inner[self.rng.choice(sorted(inner))] = self.value()
                elif isinstance(inner, list) and inner:
                    inner[self.rng.randrange(len(inner))] = self.value()

    def _bend_envelope(self, message: dict[str, Any]) -> None:
        rng = self.rng
        choice = rng.randrange(7)
        if choice == 0:
            message["jsonrpc"] = rng.choice(("1.0", 2, None, "2.0 "))
        elif choice == 1:
            message["id"] = rng.choice((None, 1.5, [], {}, True, 2**64, "", "\ud800"))
        elif choice == 2:
            message.pop("id", None)  # a notification: it must get no answer
        elif choice == 3:
            message["method"] = rng.choice(("process/bogus", "", "PROCESS/LIST", 5, None, "initialize\x00", "rpc.x"))
        elif choice == 4:
            message["params"] = rng.choice(([], "params", 1, None, [1, 2]))
        elif choice == 5:
            message["extra"] = self.value()
        else:
            message["result"] = self.value()  # a call that is also a response

    def _one_bad_string(self, message: dict[str, Any]) -> None:
        """A call valid but for one string that reaches the OS: a lone surrogate, a NUL, `=`."""
        params = message.get("params")
        if not isinstance(params, dict):
            return
        bad = self.rng.choice(("\ud800", "\udfff", "\udc80", "\x00", "=", "\ud83d\ude00"))
        places: list[Callable[[], None]] = []
        if isinstance(params.get("argv"), list):
            argv = params["argv"]
            places.append(lambda: argv.append("arg" + bad))
            places.append(lambda: argv.__setitem__(0, argv[0] + bad))
        if isinstance(params.get("env"), dict):
            env = params["env"]
            places.append(lambda: env.__setitem__("K" + bad, "v"))
            places.append(lambda: env.__setitem__("K", "v" + bad))
        if isinstance(params.get("cwd"), str):
            places.append(lambda: params.__setitem__("cwd", params["cwd"] + "/" + bad))
        if isinstance(params.get("sandbox"), dict):
            sandbox = params["sandbox"]
            places.append(lambda: sandbox.__setitem__("writableRoots", ["/tmp/" + bad]))
        for key in ("processId", "writeId", "clientName"):
            if isinstance(params.get(key), str):
                places.append(lambda key=key: params.__setitem__(key, params[key] + bad))  # type: ignore[misc]
        if places:
            self.rng.choice(places)()

    # --- text -------------------------------------------------------------------------

    def _garble(self, text: str) -> str | bytes:
        rng = self.rng
        choice = rng.randrange(10)
        if choice == 0:
            return text[: rng.randrange(len(text))]
        if choice == 1:
            at = rng.randrange(len(text))
            return text[:at] + rng.choice(("\x00", "}", "]", '"', "\\", ",", "\u2028", "\ufeff")) + text[at:]
        if choice == 2:
            return text.replace('"params"', '"params":1,"params"', 1)  # a duplicate key
        if choice == 3:
            return text.replace("0", rng.choice(("NaN", "Infinity", "-Infinity", "1e999", "01", "0x10")), 1)
        if choice == 4:
            return "\ufeff" + text
        if choice == 5:
            return " " * rng.randrange(1, 100) + text + "\t\r "
        if choice == 6:  # invalid UTF-8 (a bytes message: a text frame's payload or a line)
            raw = text.encode()
            at = rng.randrange(len(raw))
            return raw[:at] + rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80")) + raw[at:]
        if choice == 7:
            return "[" + text + "," + text + "]"  # a batch
        if choice == 8:
            return rng.choice(("", "null", "[]", "{}", "1", '"s"', "true", "[" * 100_000, "{" * 65 + "}" * 65))
        return text

    def next(self) -> str | bytes:
        rng = self.rng
        method = rng.choice(sorted(self._templates))
        self._ids += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": f"fuzz-{self._ids}", "method": method}
        message["params"] = copy.deepcopy(self._templates[method])
        if method == "initialized":
            del message["id"]
        if rng.random() < 0.25:
            self._one_bad_string(message)  # alone: everything else about the call is valid
        else:
            for _ in range(rng.randrange(1, 4)):
                rng.choice(self._mutations)(message)
        try:
            text = json.dumps(message)
        except (TypeError, ValueError):
            text = '{"jsonrpc":"2.0","id":0,"method":"process/list"}'
        if rng.random() < 0.3:
            return self._garble(text)
        return text
