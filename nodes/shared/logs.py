"""Where a long-running command's log lines go, and in what form: text for people, or one JSON
object a line (``--log-format json``) for a log collector. Lines carry counts and names only
(the services' events), never an identifier.

gRPC's own C-core lines (``I1207 ... ssl_transport_security.cc] Handshake failed ...``) are kept
off stderr unless asked for: ``GRPC_VERBOSITY`` defaults to ``ERROR`` (``nodes.cli`` sets it
before gRPC loads, as gRPC reads it only then); set ``GRPC_VERBOSITY=INFO`` to see them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def level(verbose: int, quiet: int) -> int:
    """INFO by default; each ``-v`` one step more (DEBUG), each ``-q`` one step less."""
    return min(max(logging.INFO + 10 * (quiet - verbose), logging.DEBUG), logging.CRITICAL)


def configure(log_format: str, log_level: int, file: Path | None = None) -> None:
    """Send the ``kinlink`` loggers to stderr (which systemd's journal collects) and to ``file``."""
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    root = logging.getLogger("kinlink")
    root.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(log_level)
    root.propagate = False
