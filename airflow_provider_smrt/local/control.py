"""The stack's ``/_local/`` control API: endpoints, faults, stats and known credentials (never signed)."""

from __future__ import annotations

import orjson

from airflow_provider_smrt.local.http_io import WireHandler
from airflow_provider_smrt.local.state import Stats


class ControlRoutes(WireHandler):
    """The ``/_local/...`` routes of the endpoint's request handler (a base of its ``_Handler``)."""

    def _control(self, method: str, parts: list[str]) -> None:
        registry = self.server.registry
        raw, _ = self._read_body()
        try:
            doc = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            self._send_json(400, {"error": "the body is not JSON"})
            return
        if parts == ["health"] and method == "GET":
            self._send_json(
                200,
                {
                    "status": "ok",
                    "endpoints": registry.names(),
                    "s3_endpoint_url": self.server.s3_endpoint_url,
                    "verify_signatures": self.server.verifier.enabled,
                },
            )
            return
        if parts == ["credentials"] and method == "GET":
            self._send_json(
                200,
                {
                    "verify_signatures": self.server.verifier.enabled,
                    "access_key_ids": self.server.verifier.access_key_ids(),
                },
            )
            return
        if parts == ["credentials"] and method == "PUT":
            key_id = doc.get("access_key_id") if isinstance(doc, dict) else None
            secret = doc.get("secret_access_key") if isinstance(doc, dict) else None
            if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
                self._send_json(400, {"error": "give access_key_id and secret_access_key (non-empty strings)"})
                return
            self.server.verifier.register(key_id, secret)
            self._send_json(200, {"registered": key_id})
            return
        if parts == ["endpoints"] and method == "GET":
            self._send_json(200, {"endpoints": registry.names()})
            return
        if len(parts) < 2 or parts[0] != "endpoints":
            self._send_json(404, {"error": "unknown control path"})
            return
        name, rest = parts[1], parts[2:]
        if not rest and method == "PUT":
            if not isinstance(doc, dict):
                self._send_json(400, {"error": "the body must be a JSON object"})
                return
            try:
                created = registry.put(name, doc)
            except (ValueError, TypeError) as err:
                self._send_json(400, {"error": str(err)})
                return
            self._send_json(200, created.describe())
            return
        endpoint = registry.get(name)
        if endpoint is None:
            self._send_json(404, {"error": f"no endpoint {name}"})
            return
        if not rest and method == "GET":
            self._send_json(200, endpoint.describe())
        elif not rest and method == "DELETE":
            registry.delete(name)
            self._send_json(200, {"deleted": name})
        elif rest == ["faults"] and method in ("PATCH", "PUT"):
            try:
                endpoint.set_faults(doc if isinstance(doc, dict) else None, merge=method == "PATCH")
            except (ValueError, TypeError) as err:
                self._send_json(400, {"error": str(err)})
                return
            self._send_json(200, endpoint.describe()["faults"])
        elif rest == ["stats"] and method == "GET":
            self._send_json(200, endpoint.stats.snapshot())
        elif rest == ["stats"] and method == "DELETE":
            endpoint.stats = Stats()
            self._send_json(200, endpoint.stats.snapshot())
        else:
            self._send_json(404, {"error": f"no route for {method} /_local/{'/'.join(parts)}"})
