#!/usr/bin/env python3
"""A small Docker-Hub-style token service (https://auth.docker.io/token) for e2e tests.

GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...] answers
{"token", "access_token", "expires_in", "issued_at"} with an RS256 JWT that CNCF distribution's
`auth: token:` accepts: signed with `openssl dgst -sha256 -sign KEY`, the signing certificate in the
x5c header (it must chain to the registry's rootcertbundle).

Grants: anonymous callers get `pull` on every repository except those under --private-prefix;
the basic-auth user --user NAME:PASSWORD gets everything it asks for (pull, push, delete).
Wrong credentials get 401. POST /token (OAuth2 password / refresh_token grant) is accepted too.
Every request and the access it granted are logged on stderr.
"""
import argparse
import base64
import json
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from tls_server import HandshakeInThread, serve_tls


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_to_der(path):
    lines = open(path).read().split("-----BEGIN CERTIFICATE-----", 1)[1]
    body = lines.split("-----END CERTIFICATE-----", 1)[0]
    return base64.b64decode("".join(body.split()))


class TokenHandler(HandshakeInThread, BaseHTTPRequestHandler):
    opts = None

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        url = urlparse(self.path)
        self.issue(url.path, parse_qs(url.query))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        url = urlparse(self.path)
        query = parse_qs(url.query)
        for k, v in form.items():
            query.setdefault(k, []).extend(v)
        if form.get("grant_type") == ["password"]:
            creds = "%s:%s" % (form.get("username", [""])[0], form.get("password", [""])[0])
            self.headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        self.issue(url.path, query)

    def caller(self):
        """Return (user, ok): user is None for anonymous; ok is False for wrong credentials."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None, True
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return None, False
        want_user, _, want_password = self.opts.user.partition(":")
        return user, (user == want_user and password == want_password)

    def grant(self, user, scopes):
        access = []
        for scope in scopes:
            for item in scope.split():
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or not name:
                    continue
                asked = [a for a in actions.split(",") if a]
                if user is not None:
                    granted = [a for a in asked if a in ("pull", "push", "delete", "*")]
                elif not any(name.startswith(p) for p in self.opts.private_prefix):
                    granted = [a for a in asked if a == "pull"]
                else:
                    granted = []
                if granted:
                    access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def issue(self, path, query):
        if path != "/token":
            return self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": path}]})
        user, ok = self.caller()
        if not ok:
            self.log_message("token: bad credentials for %r", user)
            return self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                              {"WWW-Authenticate": 'Basic realm="e2e"'})
        service = query.get("service", [""])[0]
        access = self.grant(user, query.get("scope", []))
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.opts.cert_der).decode()]}
        claims = {"iss": self.opts.issuer, "sub": user or "", "aud": service, "exp": now + self.opts.ttl,
                  "nbf": now - 30, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.opts.key],
                             input=signing_input.encode(), capture_output=True, check=True).stdout
        token = signing_input + "." + b64url(sig)
        self.log_message("token: user=%s service=%s host=%s access=%s", user or "-", service,
                         self.headers.get("Host"), json.dumps(access))
        self.reply(200, {"token": token, "access_token": token, "expires_in": self.opts.ttl,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def reply(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--tls-cert", required=True)
    ap.add_argument("--tls-key", required=True)
    ap.add_argument("--sign-cert", required=True, help="PEM certificate put in the x5c header")
    ap.add_argument("--sign-key", required=True, dest="key", help="PEM RSA key matching --sign-cert")
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--user", required=True, help="NAME:PASSWORD granted every action")
    ap.add_argument("--private-prefix", action="append", default=[], help="repository prefix anonymous may not pull")
    ap.add_argument("--ttl", type=int, default=300)
    opts = ap.parse_args()
    opts.cert_der = pem_to_der(opts.sign_cert)
    TokenHandler.opts = opts
    serve_tls(opts.listen, TokenHandler, opts.tls_cert, opts.tls_key, "token server listening on https://%s" % opts.listen)


if __name__ == "__main__":
    main()
