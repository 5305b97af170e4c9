"""A minimal HTTPS/JSON client for the harness's own calls to the API server and the components.

The harness needs a handful of requests (health checks, create/list/delete of nodes, waiting for
conditions) and must work before anything but the standard library and ``cryptography`` is
installed, so it does not use the kubernetes client package.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ApiError(Exception):
    """A request the API server (or a component's health endpoint) answered with an error."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def tls_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that trusts only the cluster CA and presents a client certificate."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


class KubeApi:
    """JSON requests against one API server with one client identity."""

    def __init__(self, base_url: str, context: ssl.SSLContext) -> None:
        self.base_url = base_url.rstrip("/")
        self._context = context

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        timeout: float = 10.0,
        content_type: str = "application/json",
    ) -> Any:
        """Sends a request; returns the decoded JSON answer (or the text when it is not JSON)."""
        url = self.base_url + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._context, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise ApiError(method, url, error.code, error.read().decode(errors="replace")) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def get(self, path: str, *, timeout: float = 10.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def create(self, path: str, body: object) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        """Deletes an object; a missing object counts as deleted."""
        try:
            return self.request("DELETE", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise


def health(url: str, context: ssl.SSLContext | None, *, timeout: float = 2.0) -> str | None:
    """The body of a health endpoint when it answers 200, else None (not up yet or unhealthy)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            body: str = response.read().decode(errors="replace")
            return body if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, OSError):
        return None
