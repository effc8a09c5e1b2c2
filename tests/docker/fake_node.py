"""A stand-in for `medledger start` inside the node image, for the docker tests.

The real daemon is not written yet; this script proves everything around it:
it is started with the same arguments (``start --config /config/config.toml``),
checks that the compose file mounted the config read-only, the genesis file and
a writable ``/data`` volume, then serves ``/health`` and ``/metrics`` on the API
port as the node will. ``FAKE_NODE_HEALTH`` sets the /health status code.
"""

from __future__ import annotations

import http.server
import os
import sys
from pathlib import Path


def _check_layout(argv: list[str]) -> str:
    assert argv[:2] == ["start", "--config"], argv
    config = Path(argv[2])
    text = config.read_text(encoding="utf-8")  # readable by the node's uid
    assert os.access("/genesis.json", os.R_OK), "genesis not mounted"
    assert not os.access(config.parent, os.W_OK), "config dir must be read-only"
    probe = Path("/data/fake-node-started")
    probe.write_text("ok", encoding="utf-8")  # the data volume is writable
    return text.strip()


class _Handler(http.server.BaseHTTPRequestHandler):
    index = "0"
    health = 200

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(self.health, b"ok\n", "text/plain")
        elif self.path == "/metrics":
            body = (
                "# HELP medledger_consensus_height Last committed height.\n"
                "# TYPE medledger_consensus_height gauge\n"
                f'medledger_consensus_height{{fake="yes"}} {int(self.index) + 7}\n'
            ).encode()
            self._reply(200, body, "text/plain; version=0.0.4")
        else:
            self._reply(404, b"not found\n", "text/plain")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    args = sys.argv[1:]
    if args:
        _Handler.index = _check_layout(args)
    _Handler.health = int(os.environ.get("FAKE_NODE_HEALTH", "200"))
    port = int(os.environ.get("MEDLEDGER_API_PORT", "26657"))
    print(f"fake node {_Handler.index} serving on :{port}", flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
