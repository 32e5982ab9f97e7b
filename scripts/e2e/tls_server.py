"""HTTPS serving shared by the e2e stand-ins (token_server.py, static_server.py, redirector.py).

The listening socket is wrapped with do_handshake_on_connect=False, so one slow client's handshake
runs in its own request thread (HandshakeInThread.setup) instead of blocking accept().
"""
import ssl
import sys
from http.server import ThreadingHTTPServer


class HandshakeInThread:
    """Mixin for a BaseHTTPRequestHandler: TLS handshake in the request's thread, bounded by timeout."""

    protocol_version = "HTTP/1.1"
    timeout = 60

    def setup(self):
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()


def serve_tls(listen, handler, cert, key, banner, daemon_threads=False):
    """Serves handler on listen (ADDR:PORT) over TLS with cert/key; prints banner on stderr first."""
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = daemon_threads
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    sys.stderr.write(banner + "\n")
    sys.stderr.flush()
    server.serve_forever()
