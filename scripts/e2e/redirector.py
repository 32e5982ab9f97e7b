#!/usr/bin/env python3
"""HTTPS stand-ins for registries that redirect without checking, and for what they redirect to.

  --mode redirect --status 307 --to https://STORE   every /v2/<anything> (any repository, any digest,
        HEAD and GET) is answered with a redirect to STORE + the same path, whether or not the object
        exists there, as registry.k8s.io does with its backing stores; /v2/ itself is a 200.
  --mode redirect --status 302 --to https://LOGIN --all   every request, /v2/ included, is a 302 to
        LOGIN/login?next=<path>: an upstream behind an SSO proxy, for anonymous clients.
  --mode bucket   an object store holding nothing: 404 with an S3-style NoSuchKey body for every path.
  --mode login    a login page: 200 text/html for every path and method.
  --mode liar --claim DIGEST   a registry whose HEAD of any manifest by tag answers 200 with
        Docker-Content-Digest: DIGEST (not the digest of what its GET serves); a GET of a manifest by tag
        serves a small valid OCI manifest with its true digest; /v2/ is a 200, anything else a 404.

Each request is logged on stderr with the names of the request headers it carried.
"""
import argparse
import hashlib
import re
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import quote

from tls_server import HandshakeInThread, serve_tls

LOGIN_PAGE = b"<!doctype html><html><head><title>Sign in</title></head><body><form method=post>" \
    b"<input name=user><input name=password type=password></form></body></html>\n"
HONEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":' \
    b'{"mediaType":"application/vnd.oci.image.config.v1+json","digest":' \
    b'"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}'
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TAG_PATH = re.compile(r"^/v2/.+/manifests/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
NO_SUCH_KEY = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>' \
    b"<Message>The specified key does not exist.</Message></Error>\n"


class Handler(HandshakeInThread, BaseHTTPRequestHandler):
    opts = None

    def answer(self, status, headers, body):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        o = self.opts
        if o.mode == "bucket":
            self.answer(404, [("Content-Type", "application/xml")], NO_SUCH_KEY)
        elif o.mode == "login":
            self.answer(200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
                        LOGIN_PAGE)
        elif o.mode == "liar":
            self.liar()
        elif self.path.split("?")[0] in ("/v2", "/v2/") and not o.all:
            self.answer(200, [("Content-Type", "application/json"),
                              ("Docker-Distribution-Api-Version", "registry/2.0")], b"{}")
        elif o.all:
            self.answer(o.status, [("Location", "%s/login?next=%s" % (o.to, quote(self.path, safe="")))], b"")
        else:
            self.answer(o.status, [("Location", o.to + self.path)], b"")

    def liar(self):
        path = self.path.split("?")[0]
        if path in ("/v2", "/v2/"):
            self.answer(200, [("Content-Type", "application/json")], b"{}")
        elif TAG_PATH.match(path) and self.command == "HEAD":
            self.answer(200, [("Content-Type", OCI_MANIFEST), ("Docker-Content-Digest", self.opts.claim)], b"")
        elif TAG_PATH.match(path):
            digest = "sha256:" + hashlib.sha256(HONEST).hexdigest()
            self.answer(200, [("Content-Type", OCI_MANIFEST), ("Docker-Content-Digest", digest)], HONEST)
        else:
            self.answer(404, [("Content-Type", "application/json")],
                        b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def log_message(self, fmt, *args):
        names = ",".join(sorted(k.lower() for k in self.headers.keys())) if getattr(self, "headers", None) else ""
        sys.stderr.write("%s host=%s hdrs=[%s] %s\n" % (self.address_string(), self.headers.get("Host") if
                                                         getattr(self, "headers", None) else "-", names, fmt % args))
        sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--tls-cert", required=True)
    ap.add_argument("--tls-key", required=True)
    ap.add_argument("--mode", required=True, choices=["redirect", "bucket", "login", "liar"])
    ap.add_argument("--status", type=int, default=307)
    ap.add_argument("--to", default="", help="redirect target base URL (https://host)")
    ap.add_argument("--all", action="store_true", help="redirect /v2/ too, to TO/login?next=PATH")
    ap.add_argument("--claim", default="", help="the digest a liar's HEAD names")
    a = ap.parse_args()
    if a.mode == "redirect" and not a.to:
        ap.error("--mode redirect needs --to")
    if a.mode == "liar" and not a.claim:
        ap.error("--mode liar needs --claim")
    Handler.opts = a
    serve_tls(a.listen, Handler, a.tls_cert, a.tls_key, "%s server listening on https://%s" % (a.mode, a.listen),
              daemon_threads=True)


if __name__ == "__main__":
    main()
