#!/usr/bin/env python3
"""TCP relay for upstream faults: sits behind an iptables DNAT rule in front of an upstream.

Forwards every accepted connection to --to (marking its own upstream socket with SO_MARK --mark, so
that the DNAT rule, which excludes that mark, does not send it back here). Optionally:
  --cut-after N --cuts K   the first K connections that carry more than N bytes towards the client are
                           reset there: shutdown(SHUT_RD) on both sockets (a thread blocked in recv
                           would otherwise keep them alive), then close with SO_LINGER {1, 0} (RST).
                           Later connections are relayed whole.
  --rate BYTES_PER_S       throttles the upstream-to-client direction, all connections together.
Logs one line per connection (bytes each way, cut or not) on stderr.
"""
import argparse
import socket
import struct
import sys
import threading
import time

SO_MARK = getattr(socket, "SO_MARK", 36)
CHUNK = 64 * 1024


class Relay:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.cuts_left = a.cuts
        self.next_send = time.monotonic()  # the token bucket of --rate, as the time the next byte may go
        self.conns = 0

    def take_cut(self):
        with self.lock:
            if self.cuts_left > 0:
                self.cuts_left -= 1
                return True
            return False

    def throttle(self, n):
        if not self.a.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(self.next_send, now)
            self.next_send = start + n / self.a.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)

    def serve(self, client):
        with self.lock:
            self.conns += 1
            cid = self.conns
        host, _, port = self.a.to.rpartition(":")
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            up.setsockopt(socket.SOL_SOCKET, SO_MARK, self.a.mark)
            up.settimeout(10)
            up.connect((host, int(port)))
            up.settimeout(None)
        except OSError as e:
            log("conn %d: upstream connect failed: %s" % (cid, e))
            client.close()
            return
        state = {"down": 0, "up": 0, "cut": False}
        t = threading.Thread(target=self.pump, args=(client, up, state, "up"), daemon=True)
        t.start()
        self.pump(up, client, state, "down")
        t.join(timeout=5)
        log("conn %d: %d bytes to the client, %d to the upstream%s" % (
            cid, state["down"], state["up"], ", CUT (reset)" if state["cut"] else ""))

    def pump(self, src, dst, state, way):
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                if way == "down":
                    self.throttle(len(data))
                    if (self.a.cut_after and not state["cut"] and state["down"] + len(data) > self.a.cut_after
                            and self.take_cut()):
                        keep = self.a.cut_after - state["down"]
                        dst.sendall(data[:keep])
                        state["down"] += keep
                        state["cut"] = True
                        reset(src, dst)
                        return
                dst.sendall(data)
                state[way] += len(data)
        except OSError:
            pass
        if state["cut"]:
            return
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_WR if s is dst else socket.SHUT_RD)
            except OSError:
                pass
        if way == "down":
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def reset(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RD)
        except OSError:
            pass
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError:
            pass


def log(msg):
    sys.stderr.write("%.3f %s\n" % (time.time(), msg))
    sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--to", required=True, help="ADDR:PORT of the upstream")
    ap.add_argument("--mark", type=lambda v: int(v, 0), default=0x77)
    ap.add_argument("--cut-after", type=int, default=0)
    ap.add_argument("--cuts", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.0)
    a = ap.parse_args()
    relay = Relay(a)
    host, _, port = a.listen.rpartition(":")
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(128)
    log("relay listening on %s -> %s (cut after %d bytes x%d, rate %s B/s)" % (
        a.listen, a.to, a.cut_after, a.cuts, a.rate or "unlimited"))
    while True:
        client, _ = ls.accept()
        threading.Thread(target=relay.serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
