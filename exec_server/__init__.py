"""The exec server: spawns commands in a kernel-enforced sandbox and pushes their sequenced events."""

from ._config import ServerConfig as ServerConfig
from ._server import Server as Server
from ._stdio import StdioTransport as StdioTransport, serve_stdio as serve_stdio
from ._websocket import WebSocketTransport as WebSocketTransport, serve_websocket as serve_websocket

__all__ = ["Server", "ServerConfig", "StdioTransport", "WebSocketTransport", "serve_stdio", "serve_websocket"]
