#!/usr/bin/env python3
"""An HTTPS front for a registry that answers 429 to blob GETs, as a registry whose pull quota is spent.

  --listen ADDR:PORT --tls-cert C --tls-key K --backend IP:PORT --ca CA
      GET /v2/<repo>/blobs/sha256:<hex> is answered 429 TOOMANYREQUESTS (Retry-After: 1, so that clients
      that honour it give up soon); every other request (the /v2/ check, manifests, HEADs) is forwarded
      whole to the registry at BACKEND (TLS, its certificate checked against CA; the name is not: BACKEND
      is an address) and its answer relayed, repeated headers (one Accept per media type) included.

Each request is logged on stderr: method, path, status.
"""
import argparse
import http.client
import re
import ssl
import sys
from http.server import BaseHTTPRequestHandler

from tls_server import HandshakeInThread, serve_tls

BLOB_GET = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
THROTTLED = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"pull quota exhausted"}]}'


class Handler(HandshakeInThread, BaseHTTPRequestHandler):
    opts = None
    ctx = None

    def handle_any(self):
        path = self.path.split("?")[0]
        if self.command == "GET" and BLOB_GET.match(path):
            self.send_response(429)
            for name, value in [("Content-Type", "application/json"), ("Retry-After", "1"),
                                ("Content-Length", str(len(THROTTLED)))]:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(THROTTLED)
            return
        self.forward()

    def forward(self):
        o = self.opts
        host, _, port = o.backend.rpartition(":")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPSConnection(host, int(port), context=self.ctx, timeout=60)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        # every value of a repeated header (dockerd and skopeo send one Accept per media type)
        for name, value in self.headers.items():
            if name.lower() not in HOP:
                conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--tls-cert", required=True)
    ap.add_argument("--tls-key", required=True)
    ap.add_argument("--backend", required=True, help="the registry's IP:PORT")
    ap.add_argument("--ca", required=True, help="the CA that signed the registry's certificate")
    a = ap.parse_args()
    Handler.opts = a
    Handler.ctx = ssl.create_default_context(cafile=a.ca)
    Handler.ctx.check_hostname = False
    serve_tls(a.listen, Handler, a.tls_cert, a.tls_key, "throttler listening on https://%s" % a.listen,
              daemon_threads=True)


if __name__ == "__main__":
    main()
