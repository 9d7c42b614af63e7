"""A fast local stand-in for the Graph API's events endpoint, run in its own process by run.py.

It accepts JSON bodies (capi-sync) and form-encoded ones (Meta's SDK), counts events and
answers like Meta; it checks nothing else, so it never is the bottleneck being measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import orjson


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like graph.facebook.com
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK (40 ms on Linux), which would cap every client at 25 requests/s.
    disable_nagle_algorithm = True
    latency = 0.0  # seconds each answer waits, as a remote Graph API would

    def do_POST(self) -> None:
        if self.latency:
            time.sleep(self.latency)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-type", "").startswith("application/json"):
            data = orjson.loads(body)["data"]
        else:
            data = orjson.loads(parse_qs(body.decode())["data"][0])
        reply = orjson.dumps({"events_received": len(data), "messages": [], "fbtrace_id": "bench"})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    Handler.latency = args.latency_ms / 1000
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    args.port_file.write_text(str(server.server_address[1]))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
