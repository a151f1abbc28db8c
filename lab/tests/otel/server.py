"""An HTTP server instrumented with the OpenTelemetry SDK (no agent help).

Usage: server.py --listen IP:PORT
Each GET starts a server span from the incoming W3C context (the SDK's
default propagator) and answers with the span's ids as the SDK sees them.
Prints `ready IP:PORT` once listening.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("tclab-otel-server")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ctx = propagate.extract(self.headers)
        with tracer.start_as_current_span(f"GET {self.path}", context=ctx, kind=trace.SpanKind.SERVER) as span:
            sc = span.get_span_context()
            parent = span.parent
            doc = {
                "service": "otel-sdk-server",
                "path": self.path,
                "traceparent": self.headers.get("traceparent"),
                "sdk": {
                    "trace_id": format(sc.trace_id, "032x"),
                    "span_id": format(sc.span_id, "016x"),
                    "parent_id": format(parent.span_id, "016x") if parent else None,
                    "parent_remote": bool(parent and parent.is_remote),
                    "sampled": sc.trace_flags.sampled,
                },
            }
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    print(f"ready {a.listen}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
