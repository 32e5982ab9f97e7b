"""Helpers of bench/memory.sh: hold idle TLS connections, sample a server's memory from /proc.

hold HOST PORT SNI CAFILE N MAXSECS READY STOP: opens N TLS connections (ALPN http/1.1, handshake
  completed, certificate verified against CAFILE), writes "N" to READY, holds them without sending a
  request until the file STOP exists or MAXSECS pass, then prints how many the server still held open.
sample OUT STOP MAXSECS PID...: every 0.2 s until STOP exists or MAXSECS pass, writes
  "seconds rss_kib pss_kib" to OUT, summed over each PID and its children (nginx's workers).
summary FILE: prints "median_rss peak_rss median_pss peak_pss samples" in MiB.
"""
import os
import socket
import ssl
import statistics
import sys
import time


def hold(host, port, sni, cafile, n, maxsecs, ready, stop):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    socks = []
    deadline = time.monotonic() + maxsecs
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        raw = socket.create_connection((host, port), timeout=10)
        socks.append(ctx.wrap_socket(raw, server_hostname=sni))
    with open(ready, "w") as f:
        f.write(f"{len(socks)}\n")
    while time.monotonic() < deadline and not os.path.exists(stop):
        time.sleep(0.1)
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 1 if s.recv(1) else 0  # data would be odd, but the connection is open
        except ssl.SSLWantReadError:
            alive += 1
        except (OSError, ssl.SSLError):
            pass
        s.close()
    print(f"{alive} {len(socks)}")


def tree(pid):
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample(out, stop, maxsecs, pids):
    t0 = time.monotonic()
    with open(out, "w") as f:
        while time.monotonic() - t0 < maxsecs and not os.path.exists(stop):
            all_pids = [p for pid in pids for p in tree(pid)]
            rss = sum(kib(f"/proc/{p}/status", "VmRSS:") for p in all_pids)
            pss = sum(kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in all_pids)
            f.write(f"{time.monotonic() - t0:.2f} {rss} {pss}\n")
            f.flush()
            time.sleep(0.2)


def summary(path):
    rows = [line.split() for line in open(path) if line.strip()]
    rss = [int(r[1]) / 1024 for r in rows]
    pss = [int(r[2]) / 1024 for r in rows]
    if not rows:
        print("nan nan nan nan 0")
        return
    print(f"{statistics.median(rss):.1f} {max(rss):.1f} {statistics.median(pss):.1f} {max(pss):.1f} {len(rows)}")


def main(argv):
    cmd = argv[1]
    if cmd == "hold":
        host, port, sni, cafile, n, maxsecs, ready, stop = argv[2:10]
        hold(host, int(port), sni, cafile, int(n), float(maxsecs), ready, stop)
    elif cmd == "sample":
        sample(argv[2], argv[3], float(argv[4]), [int(p) for p in argv[5:]])
    elif cmd == "summary":
        summary(argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
