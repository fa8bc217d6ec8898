#!/usr/bin/env python3
"""An OTLP/HTTP sink for benchmarks: accepts every POST (e.g. /v1/traces), reads and
discards the body, answers 200 with an empty protobuf message. GET /count says how
many exports and bytes it took.

    python3 bench/otlp-sink.py PORT
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

exports = 0
received = 0


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global exports, received
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        exports += 1
        received += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        body = f"exports {exports} bytes {received}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
