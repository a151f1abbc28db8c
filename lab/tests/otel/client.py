"""An HTTP client instrumented with the OpenTelemetry SDK (no agent help).

Usage: client.py URL
Starts a client span, injects its context (W3C traceparent) into a GET of
URL and prints one JSON line: the span's ids and the response document.
"""
import http.client
import json
import sys
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("tclab-otel-client")


def main():
    url = urlsplit(sys.argv[1])
    with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
        headers = {}
        propagate.inject(headers)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", url.path, headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        sc = span.get_span_context()
    print(json.dumps({
        "status": resp.status,
        "sent": headers.get("traceparent"),
        "trace_id": format(sc.trace_id, "032x"),
        "span_id": format(sc.span_id, "016x"),
        "response": body,
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
