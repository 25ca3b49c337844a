"""The canary upstream: answers every request with 200 and a JSON echo of what reached it.

The echo holds ``method``, ``path``, ``query`` (the raw query string) and ``headers`` (every
received header except ``Authorization``, names as sent), so a check can see what the Gateway
forwarded — and that it did not forward the client's bearer token.
"""

from __future__ import annotations

from caracal_restore.reference.services.common import (
    Request,
    Response,
    RunningService,
    json_response,
    starting,
)


def echo(req: Request) -> Response:
    """The echo of one request."""
    headers: dict[str, str] = {}
    for name, value in req.header_items:
        if name.lower() == "authorization":
            continue
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return json_response(200, {"method": req.method, "path": req.path, "query": req.raw_query,
                               "headers": headers})


def start_upstream() -> RunningService:
    """Start the canary upstream on 127.0.0.1; use as a context manager."""
    with starting("upstream") as life:
        return life.running(life.serve(echo))
