"""A fast local stand-in for the Graph API's events endpoint, run in its own process by run.py.

It accepts JSON bodies (capi-sync) and form-encoded ones (Meta's SDK), counts events and
answers like Meta; it checks nothing else, so it never is the bottleneck being measured.

It counts the `event_name` keys in the raw body instead of decoding it. The real endpoint decodes
on Meta's machines, not on the sender's, and decoding here is not equally cheap for the two
senders: `parse_qs` on the SDK's form-encoded body cost this process about 100 µs per event
(the SDK waits for each answer, so that time landed in its wall time), orjson on capi-sync's JSON
about 6 µs. Each bench event has one `event_name` key, and a quote inside a value is escaped
(`\\"`, `%5C%22`), so no value matches.
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

EVENT_KEY = {True: b'"event_name":', False: b"%22event_name%22%3A"}  # JSON body, form-encoded body


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
        is_json = self.headers.get("content-type", "").startswith("application/json")
        events = body.count(EVENT_KEY[is_json])
        reply = orjson.dumps({"events_received": events, "messages": [], "fbtrace_id": "bench"})
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
