"""Raw JSON requests through the official client's ApiClient (auth, TLS and proxies as configured),
without the generated models: bodies stay plain dicts, and a request costs little client CPU."""

from __future__ import annotations

import json
from typing import Any

REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds for ordinary calls


def request(client: Any, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, bytes]:
    """One API call (ApiClient.param_serialize + call_api, the path the typed methods take, minus
    model validation and response deserialization). Returns (HTTP status, body); never raises
    for an HTTP status. Keywords: see `send`."""
    r = send(client, method, path, body, **kw)
    return r.status, r.data


def send(
    client: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: dict | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
    timeout: Any = 60,
) -> Any:
    """`request`, returning the read urllib3 response (status, reason, data)."""
    q = [
        (k, str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in (query or {}).items()
        if v is not None
    ]
    method, url, headers, data, post_params = client.param_serialize(
        method,
        path,
        query_params=q or None,
        body=body,
        header_params={"Content-Type": content_type, "Accept": accept},
        auth_settings=["BearerToken"],
    )
    r = client.call_api(
        method, url, header_params=headers, body=data, post_params=post_params, _request_timeout=timeout
    )
    r.read()
    return r


class Rest:
    """JSON in, JSON out: `request` with non-2xx answers raised as ApiException."""

    def __init__(self, api: Any, timeout: Any = REQUEST_TIMEOUT):
        self.api = api
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict | None = None,
        content_type: str = "application/json",
        timeout: Any = None,
        raw: bool = False,
    ) -> Any:
        from kubernetes.client.rest import ApiException

        r = send(
            self.api,
            method,
            path,
            body,
            query=query,
            content_type=content_type,
            accept="application/json, */*",
            timeout=timeout or self.timeout,
        )
        data = r.data
        if not 200 <= r.status <= 299:
            raise ApiException(
                status=r.status, reason=r.reason, body=data.decode("utf-8", "replace") if data else None
            )
        text = data.decode("utf-8", "replace") if data else ""
        if raw:
            return text
        return json.loads(text) if text else {}

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw)

    def create(self, path: str, body: dict, **kw) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: dict, **kw) -> Any:
        return self.request("PUT", path, body, **kw)

    def merge_patch(self, path: str, body: dict, **kw) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json", **kw)

    def delete(self, path: str, *, query: dict | None = None, missing_ok: bool = True, **kw) -> Any:
        try:
            return self.request("DELETE", path, {"propagationPolicy": "Background"}, query=query, **kw)
        except Exception as e:
            if missing_ok and getattr(e, "status", None) == 404:
                return None
            raise

    def get_or_none(self, path: str, **kw) -> Any:
        try:
            return self.get(path, **kw)
        except Exception as e:
            if getattr(e, "status", None) == 404:
                return None
            raise


def is_status(e: BaseException, *codes: int) -> bool:
    return getattr(e, "status", None) in codes
