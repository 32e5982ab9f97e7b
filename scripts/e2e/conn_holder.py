#!/usr/bin/env python3
"""Idle connections and slowloris clients against the appliance's listeners, for e2e.sh.

  --tcp ADDR:PORT:N          N TCP connections that send nothing (no ClientHello on a TLS port)
  --tls ADDR:PORT:N:SNI      N connections that finish a TLS handshake (SNI), then send nothing
  --slowloris ADDR:PORT      a client that sends a request header one byte per --every seconds
  --slowloris-tls ADDR:PORT:SNI   the same after a TLS handshake
  --hold S                   how long to hold everything (or until --stop-file exists)

Opens everything (bounded: --open-timeout), writes a line "opened ..." to --ready-file, holds, then
prints one JSON object on stdout: connections opened/failed per target, how many were still open at
the end (the appliance had not closed them), and for each slowloris client the bytes it sent and
how long the appliance kept it open. Raise the descriptor limit (ulimit -n) for this process.
"""
import argparse
import json
import os
import select
import socket
import ssl
import sys
import threading
import time


def parse_target(spec, parts):
    fields = spec.split(":")
    if len(fields) != parts:
        raise SystemExit("bad target %r" % spec)
    return fields


def open_tcp(host, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def still_open(s):
    """Not closed or reset by the peer (POLLRDHUP works for TLS sockets too, whose close_notify is data)."""
    try:
        p = select.poll()
        p.register(s.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return not p.poll(0)
    except (OSError, ValueError):
        return False


class Target:
    def __init__(self, kind, host, port, n, sni=None):
        self.kind, self.host, self.port, self.n, self.sni = kind, host, int(port), int(n), sni
        self.socks, self.failed, self.errors = [], 0, {}

    def name(self):
        return "%s %s:%d" % (self.kind, self.host, self.port)

    def open_all(self, ctx, timeout, deadline):
        for _ in range(self.n):
            if time.monotonic() > deadline:
                self.failed += 1
                self.errors["deadline"] = self.errors.get("deadline", 0) + 1
                continue
            try:
                s = open_tcp(self.host, self.port, timeout)
                if self.kind == "tls":
                    s = ctx.wrap_socket(s, server_hostname=self.sni)
                s.setblocking(False) if self.kind == "tcp" else s.settimeout(0)
                self.socks.append(s)
            except (OSError, ssl.SSLError) as e:
                self.failed += 1
                key = type(e).__name__ + ":" + str(getattr(e, "errno", ""))
                self.errors[key] = self.errors.get(key, 0) + 1

    def report(self):
        alive = sum(1 for s in self.socks if still_open(s))
        return {"target": self.name(), "wanted": self.n, "opened": len(self.socks), "failed": self.failed,
                "errors": self.errors, "open_at_end": alive}


def slowloris(host, port, sni, ctx, every, hold, out):
    request = ("GET /v2/ HTTP/1.1\r\nHost: %s\r\nUser-Agent: slowloris\r\nX-Padding: %s\r\n\r\n"
               % (sni or host, "a" * 4096)).encode()
    t0 = time.monotonic()
    sent, closed_after, why = 0, None, "held until the end"
    try:
        s = open_tcp(host, int(port), 10)
        if sni:
            s = ctx.wrap_socket(s, server_hostname=sni)
        s.settimeout(0.2)
        while time.monotonic() - t0 < hold and not out.get("stop"):
            try:
                s.send(request[sent % len(request):sent % len(request) + 1])
                sent += 1
            except OSError as e:
                closed_after, why = time.monotonic() - t0, "send failed: %s" % e
                break
            try:
                data = s.recv(4096)
                if not data:
                    closed_after, why = time.monotonic() - t0, "closed by the appliance"
                    break
                closed_after, why = time.monotonic() - t0, "answered: %r" % data[:60]
                break
            except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError as e:
                closed_after, why = time.monotonic() - t0, "recv failed: %s" % e
                break
            time.sleep(max(0.0, every - 0.2))
        s.close()
    except (OSError, ssl.SSLError) as e:
        why = "connect failed: %s" % e
    out["result"] = {"target": "slowloris %s:%s%s" % (host, port, " tls" if sni else ""), "bytes_sent": sent,
                     "closed_after_s": None if closed_after is None else round(closed_after, 1), "outcome": why}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tcp", action="append", default=[])
    ap.add_argument("--tls", action="append", default=[])
    ap.add_argument("--slowloris", action="append", default=[])
    ap.add_argument("--slowloris-tls", action="append", default=[])
    ap.add_argument("--cafile", help="CA to verify TLS with (default: no verification)")
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--hold", type=float, default=60.0)
    ap.add_argument("--open-timeout", type=float, default=60.0)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--stop-file", required=True)
    a = ap.parse_args()

    ctx = ssl.create_default_context(cafile=a.cafile) if a.cafile else ssl._create_unverified_context()
    targets = [Target("tcp", *parse_target(t, 3)) for t in a.tcp]
    targets += [Target("tls", *parse_target(t, 4)) for t in a.tls]
    lorises = []
    for spec in a.slowloris:
        host, port = parse_target(spec, 2)
        lorises.append((host, port, None))
    for spec in a.slowloris_tls:
        host, port, sni = parse_target(spec, 3)
        lorises.append((host, port, sni))
    t0 = time.monotonic()
    deadline = t0 + a.open_timeout
    threads, results = [], []
    for host, port, sni in lorises:
        out = {}
        th = threading.Thread(target=slowloris, args=(host, port, sni, ctx, a.every, a.hold, out), daemon=True)
        th.start()
        threads.append(th)
        results.append(out)
    for t in targets:
        t.open_all(ctx, 10, deadline)
    opened = sum(len(t.socks) for t in targets)
    with open(a.ready_file, "w") as f:
        f.write("opened %d connections in %.1f s\n" % (opened, time.monotonic() - t0))
    end = t0 + a.hold
    while time.monotonic() < end and not os.path.exists(a.stop_file):
        time.sleep(0.2)
    report = {"held_s": round(time.monotonic() - t0, 1), "targets": [t.report() for t in targets]}
    for out in results:
        out["stop"] = True
    for th in threads:
        th.join(timeout=5)
    report["slowloris"] = [out.get("result") for out in results]
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
