"""A local API Gateway (AWS_IAM authorization) for one of the template's APIs: a REST API (AnnexApi) or
an HTTP API (HeartbeatApi, payload format 2.0 events: see http_api.py).

Routes come from template.yaml itself: every `Type: Api` event, of every function, whose RestApiId is the
API (or `Type: HttpApi` whose ApiId is). Matching follows API Gateway: the most specific resource wins (a
literal segment beats `{param}`, which beats `{proxy+}`), then the resource's own method, else its ANY.
No match is a REST API's 403 "Missing Authentication Token", an HTTP API's 404 "Not Found". Each
request's SigV4 signature is verified (sigv4.py) against a pluggable identity table; the verified
identity becomes the REST event's `requestContext.identity.userArn`, the HTTP API event's
`requestContext.authorizer.iam.userArn`.

Handlers run one at a time (a lock): in-process moto is not thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib
import io
import json
import threading
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from annex_local.events import ACCOUNT, FakeContext, rest_event
from annex_local.http_api import http_event
from annex_local.sigv4 import Identity, SigV4Error, SigV4Verifier, Verified
from annex_local.template import TEMPLATE, load_template

Handler = Callable[[dict[str, Any], Any], Any]
Authorizer = Callable[[Verified, str, str], bool]  # (identity, method, resource path) -> allowed
IdentityTable = MutableMapping[str, Identity | tuple[str, str] | tuple[str, str, str]]
_LITERAL, _PARAM, _GREEDY = 2, 1, 0
# The methods API Gateway routes (ANY stands for these); others never reach a function.
API_GATEWAY_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Route:
    path: str  # the template's path, such as /annexes/{annex_id}
    method: str  # GET, POST, ... or ANY
    function: str  # the function's logical id
    module: str  # functions.request.app
    attribute: str  # handler

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(s for s in self.path.split("/") if s)

    def specificity(self) -> tuple[int, ...]:
        return tuple(
            _GREEDY if s.endswith("+}") else _PARAM if s.startswith("{") else _LITERAL for s in self.segments
        )

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """Path parameters if `parts` (the request path's segments) fit this resource."""
        params: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if seg.endswith("+}"):
                if i >= len(parts):
                    return None
                params[seg[1:-2]] = "/".join(parts[i:])
                return params
            if i >= len(parts):
                return None
            if seg.startswith("{"):
                params[seg[1:-1]] = parts[i]
            elif seg != parts[i]:
                return None
        return params if len(parts) == len(self.segments) else None


def _ref(value: Any) -> str | None:
    return value.get("Ref") if isinstance(value, dict) else None


def load_routes(template: Path = TEMPLATE, api: str = "AnnexApi") -> list[Route]:
    tpl = load_template(template)
    global_code_uri = tpl.get("Globals", {}).get("Function", {}).get("CodeUri")
    routes = []
    for logical_id, resource in tpl["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        code_uri = str(props.get("CodeUri") or global_code_uri or "")
        handler = str(props.get("Handler", ""))
        module_path, _, attribute = handler.rpartition(".")
        package = ".".join(p for p in Path(code_uri).parts if p not in (".", ""))
        module = f"{package}.{module_path}" if package else module_path
        for event in (props.get("Events") or {}).values():
            spec = event.get("Properties", {})
            kind, api_key = event.get("Type"), "RestApiId" if event.get("Type") == "Api" else "ApiId"
            if kind not in ("Api", "HttpApi") or _ref(spec.get(api_key)) != api:
                continue
            method = str(spec["Method"]).upper()
            routes.append(
                Route(str(spec["Path"]), "ANY" if method == "ANY" else method, logical_id, module, attribute)
            )
    return routes


def stage_name(template: Path = TEMPLATE, api: str = "AnnexApi") -> str:
    """The API's stage: its StageName; an HTTP API without one serves the `$default` stage (no prefix)."""
    return str(load_template(template)["Resources"][api]["Properties"].get("StageName", "$default"))


def is_http_api(template: Path = TEMPLATE, api: str = "AnnexApi") -> bool:
    return bool(load_template(template)["Resources"][api]["Type"] == "AWS::Serverless::HttpApi")


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The most specific resource matching `path`, then its method (or ANY). None: API Gateway
        answers "Missing Authentication Token" and never falls back to a less specific resource."""
        parts = [unquote(p) for p in path.split("/") if p]
        candidates = [(r, p) for r in self.routes if (p := r.match(parts)) is not None]
        if not candidates:
            return None
        best = max(r.specificity() for r, _ in candidates)
        on_resource = [(r, p) for r, p in candidates if r.specificity() == best]
        wanted = [method.upper(), "ANY"] if method.upper() in API_GATEWAY_METHODS else [method.upper()]
        for want in wanted:
            for route, params in on_resource:
                if route.method == want:
                    return route, params
        return None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json_answer(status: int, body: dict[str, Any], *, error_type: str | None = None) -> Answer:
    headers = [("Content-Type", "application/json")]
    if error_type:
        headers.append(("x-amzn-ErrorType", error_type))
    return Answer(status, headers, json.dumps(body).encode())


def _title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _repeated_values(event: dict[str, Any], query: str, headers: list[tuple[str, str]]) -> None:
    """As API Gateway's REST proxy event: a repeated query parameter or header keeps its last value in
    `queryStringParameters`/`headers` and every value in the `multiValue...` twins."""
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    event["queryStringParameters"] = {k: v[-1] for k, v in params.items()} or None
    event["multiValueQueryStringParameters"] = params or None
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        multi.setdefault(_title(name), []).append(value)
    for name, value in event["headers"].items():
        multi.setdefault(name, [value])
    event["multiValueHeaders"] = multi


class Gateway:
    """`Gateway(identities).start()` serves http://127.0.0.1:<port>/<stage>; `stop()` (or a with-block)
    shuts it down. `handlers` maps a function's logical id to a callable, overriding the import of its
    CodeUri + Handler; `authorize` decides execute-api:Invoke per identity and route (default: allow)."""

    def __init__(
        self,
        identities: IdentityTable,
        *,
        region: str = "us-east-1",
        host: str = "127.0.0.1",
        port: int = 0,
        template: Path = TEMPLATE,
        api: str = "AnnexApi",
        handlers: MutableMapping[str, Handler] | None = None,
        authorize: Authorizer | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.identities = identities
        self.region = region
        self.host = host
        self.port = port
        self.api = api
        self.stage = stage_name(template, api)
        self.http_api = is_http_api(template, api)
        self.router = Router(load_routes(template, api))
        self.verifier = SigV4Verifier(identities, region=region)
        self.handlers: MutableMapping[str, Handler] = handlers if handlers is not None else {}
        self.authorize = authorize
        self.log = log
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- the API Gateway part (no sockets: tests call it directly) ---------------------------------

    def _handler(self, route: Route) -> Handler:
        if route.function not in self.handlers:
            module = importlib.import_module(route.module)
            self.handlers[route.function] = getattr(module, route.attribute)
        return self.handlers[route.function]

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
        split = urlsplit(target)
        prefix = "" if self.stage == "$default" else f"/{self.stage}"
        if prefix and split.path != prefix and not split.path.startswith(prefix + "/"):
            if self.http_api:
                return _json_answer(404, {"message": "Not Found"})
            return _json_answer(403, {"message": "Forbidden"}, error_type="ForbiddenException")
        path = split.path[len(prefix) :] or "/"
        found = self.router.find(method, path)
        if found is None and self.http_api:
            return _json_answer(404, {"message": "Not Found"})  # an HTTP API's answer to no route
        if found is None:
            return _json_answer(
                403,
                {"message": "Missing Authentication Token"},
                error_type="MissingAuthenticationTokenException",
            )
        route, params = found
        try:
            who = self.verifier.verify(method, target, headers, body)
        except SigV4Error as exc:
            self._log(f"{method} {target} -> {exc.status} {exc.reason}")
            return _json_answer(exc.status, exc.body(), error_type=exc.error_type)
        allowed = self.authorize is None or self.authorize(who, method.upper(), path)
        if not allowed and self.http_api:
            # An HTTP API refuses a caller whose policies do not allow execute-api:Invoke tersely.
            self._log(f"{method} {target} -> 403 ({who.arn} may not invoke it)")
            return _json_answer(403, {"message": "Forbidden"}, error_type="ForbiddenException")
        if not allowed:
            account = f"********{ACCOUNT[-4:]}"
            resource = (
                f"arn:aws:execute-api:{self.region}:{account}:local/{self.stage}/{method.upper()}{path}"
            )
            denied = SigV4Error(
                f"User: {who.arn} is not authorized to perform: execute-api:Invoke on resource: {resource}",
                error_type="AccessDeniedException",
                reason="not-authorized",
            )
            return _json_answer(403, denied.body(), error_type=denied.error_type)
        if self.http_api:
            return self._invoke(
                route,
                method,
                target,
                who,
                http_event(
                    method.upper(),
                    path,
                    caller_arn=who.arn,
                    body=body.decode("utf-8", errors="replace") if body else None,
                    headers=headers,
                    query=split.query,
                    stage=self.stage,
                    route_key=f"{route.method} {route.path}",
                    access_key=who.access_key,
                ),
            )
        event = rest_event(
            method.upper(),
            path,
            caller_arn=who.arn,
            body=body.decode("utf-8", errors="replace") if body else None,
            query=dict(parse_qsl(split.query, keep_blank_values=True)) or None,
            headers={_title(k): v for k, v in headers},
            resource=route.path,
            path_parameters=params or None,
            stage=self.stage,
        )
        event["requestContext"]["identity"]["accessKey"] = who.access_key
        _repeated_values(event, split.query, headers)
        return self._invoke(route, method, target, who, event)

    def _invoke(self, route: Route, method: str, target: str, who: Verified, event: dict[str, Any]) -> Answer:
        request_id = str(event["requestContext"]["requestId"])
        output = io.StringIO()
        try:
            # One at a time: in-process moto is not thread-safe. The function's stdout (its logs and EMF
            # metrics) goes to the gateway's log, as Lambda sends it to CloudWatch, never to the caller.
            with self._lock, contextlib.redirect_stdout(output):
                response = self._handler(route)(event, FakeContext(route.function))
            answer = self._answer(response)
        except Exception:
            self._log(f"{method} {target} -> 502: {route.function} failed\n{traceback.format_exc()}")
            answer = _json_answer(502, {"message": "Internal server error"})
        for line in output.getvalue().splitlines():
            self._log(f"  {route.function}: {line}")
        self._log(f"{method} {target} -> {answer.status} ({who.arn})")
        return Answer(answer.status, [*answer.headers, ("x-amzn-RequestId", request_id)], answer.body)

    @staticmethod
    def _answer(response: Any) -> Answer:
        """A Lambda proxy response, as API Gateway writes it back (a malformed one is a 502)."""
        if not isinstance(response, dict) or "statusCode" not in response:
            raise ValueError(f"malformed Lambda proxy response: {str(response)[:200]}")
        headers = [(str(k), str(v)) for k, v in (response.get("headers") or {}).items()]
        for key, values in (response.get("multiValueHeaders") or {}).items():
            headers.extend((str(key), str(v)) for v in values)
        raw = response.get("body") or ""
        try:
            body = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode()
        except (binascii.Error, ValueError) as exc:
            raise ValueError("isBase64Encoded body is not base64") from exc
        return Answer(int(response["statusCode"]), headers, body)

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    # --- the HTTP part ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base URL with its stage, as the template's ApiUrl output (ANNEX_ENDPOINT)."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        base = f"http://{self.host}:{self._server.server_address[1]}"
        return base if self.stage == "$default" else f"{base}/{self.stage}"

    def start(self) -> Gateway:
        gateway = self

        class _Request(BaseHTTPRequestHandler):
            server_version = "annex-local-gateway"

            def _serve(self) -> None:
                try:
                    body = self._read_body()
                except ValueError as exc:
                    answer = _json_answer(400, {"message": str(exc)})
                else:
                    answer = gateway.handle(self.command, self.path, list(self.headers.items()), body)
                self.send_response(answer.status)
                for name, value in answer.headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = self.headers.get("Content-Length")
                if length is None:
                    return b""
                if not length.isdigit():
                    raise ValueError("Content-Length is not a number")
                return self.rfile.read(int(length))

            def __getattr__(self, name: str) -> Any:
                # Every method reaches the router (TRACE, PROPFIND, ...), which answers as API Gateway
                # would; http.server's own answer for them would be a 501.
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

            def log_message(self, format: str, *args: Any) -> None:
                return  # Gateway.handle logs each request through `log`

        self._server = ThreadingHTTPServer((self.host, self.port), _Request)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="annex-local-gateway", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Gateway:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
