"""A stub of what the heartbeat agent talks to over HTTP, on 127.0.0.1 (run as a subprocess, so the real
curl on PATH talks to it): IMDSv2 (a session token first, then the role's credentials, refused without
the token, as EC2 does) and POST /heartbeat, which checks the SigV4 signature with the local stack's
verifier (API Gateway's rules) and answers from a script of responses.

Usage: python endpoint.py DIR. DIR/responses.json is a list of [status, body] answered in turn (the last
one repeats); DIR/spot-instance-action and DIR/rebalance, when present, are the IMDS spot notices; each
heartbeat request is appended to DIR/requests.jsonl; the port goes to DIR/port.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from annex_local.sigv4 import Identity, SigV4Error, SigV4Verifier

ACCESS_KEY = "ASIAFAKEINSTANCEKEY1"
SECRET_KEY = "FAKE/SECRET+KEY"
SESSION_TOKEN = "FAKESESSIONTOKEN"
INSTANCE_ARN = "arn:aws:sts::123456789012:assumed-role/annex-instance/i-0123456789abcdef0"
IMDS_TOKEN = "imds-session-token"
REGION = "us-east-1"
# IMDS spot notices: 404 until the test writes the file, then its content (as EC2 does).
SPOT_FILES = {
    "/latest/meta-data/spot/instance-action": "spot-instance-action",
    "/latest/meta-data/events/recommendations/rebalance": "rebalance",
}


class Handler(BaseHTTPRequestHandler):
    directory: ClassVar[Path]
    verifier = SigV4Verifier({ACCESS_KEY: Identity(SECRET_KEY, INSTANCE_ARN, SESSION_TOKEN)}, region=REGION)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if self.path != "/latest/api/token":
            self._send(404, "not found")
        elif not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            self._send(400, "missing or invalid X-aws-ec2-metadata-token-ttl-seconds")
        else:
            self._send(200, IMDS_TOKEN)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
            self._send(401, "")
        elif self.path == "/latest/meta-data/iam/security-credentials/":
            self._send(200, "annex-instance")
        elif self.path in SPOT_FILES:
            notice = self.directory / SPOT_FILES[self.path]
            if notice.exists():
                self._send(200, notice.read_text(), "application/json")
            else:
                self._send(404, "not found")
        elif self.path == "/latest/meta-data/iam/security-credentials/annex-instance":
            creds = {"AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY, "Token": SESSION_TOKEN}
            self._send(200, json.dumps({"Code": "Success", **creds}))
        else:
            self._send(404, "not found")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        entry: dict[str, object] = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode(errors="replace"),
        }
        try:
            verified = self.verifier.verify("POST", self.path, self.headers.items(), body)
            entry["caller"] = verified.arn
        except SigV4Error as exc:
            entry["refused"] = exc.reason
            self._log(entry)
            self._send(exc.status, json.dumps(exc.body), "application/json")
            return
        if self.path != "/heartbeat":
            self._log(entry)
            self._send(404, '{"message":"Not Found"}', "application/json")
            return
        responses = json.loads((self.directory / "responses.json").read_text())
        served = sum(1 for _ in self._requests())
        status, answer = responses[min(served, len(responses) - 1)]
        entry["answered"] = status
        self._log(entry)
        self._send(status, answer if isinstance(answer, str) else json.dumps(answer), "application/json")

    def _requests(self) -> list[str]:
        log = self.directory / "requests.jsonl"
        return [line for line in log.read_text().splitlines() if '"answered"' in line] if log.exists() else []

    def _log(self, entry: dict[str, object]) -> None:
        with (self.directory / "requests.jsonl").open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


def main() -> None:
    Handler.directory = Path(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    (Handler.directory / "port.tmp").write_text(str(server.server_address[1]))
    (Handler.directory / "port.tmp").replace(Handler.directory / "port")
    server.serve_forever()


if __name__ == "__main__":
    main()
