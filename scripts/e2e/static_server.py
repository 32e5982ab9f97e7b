#!/usr/bin/env python3
"""Static HTTPS file server standing in for a registry CDN (production.cloudflare.docker.com).

Serves --root (the Docker-Hub registry's storage root) so the 307 targets of distribution's
`redirect` storage middleware (baseurl + /docker/registry/v2/blobs/.../data) resolve. GET and HEAD.
Directory listings are off. Each request is logged on stderr with the names of the request headers
it carried (hdrs=[...]): e2e.sh checks that no credential-bearing header (Authorization, Cookie)
followed a cross-host redirect here.
"""
import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler

from tls_server import HandshakeInThread, serve_tls


class Handler(HandshakeInThread, SimpleHTTPRequestHandler):
    def list_directory(self, path):
        self.send_error(403, "no listing")
        return None

    def log_message(self, fmt, *args):
        headers = getattr(self, "headers", None)
        names = ",".join(sorted(k.lower() for k in headers.keys())) if headers else ""
        sys.stderr.write("%s host=%s hdrs=[%s] %s\n" % (self.address_string(), headers.get("Host") if headers else "-",
                                                        names, fmt % args))
        sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--root", required=True)
    ap.add_argument("--tls-cert", required=True)
    ap.add_argument("--tls-key", required=True)
    a = ap.parse_args()
    serve_tls(a.listen, functools.partial(Handler, directory=a.root), a.tls_cert, a.tls_key,
              "static server listening on https://%s root=%s" % (a.listen, a.root))


if __name__ == "__main__":
    main()
