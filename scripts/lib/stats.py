#!/usr/bin/env python3
"""Statistics for bench/run.sh and scripts/e2e.sh: medians, ratios, sums, elapsed times, and the per-GET
figures of the benchmark, printed with the precision the reports use.

    stats.py median V...            the median (one value: itself; an even count: the mean of the middle two, %.2f)
    stats.py ratio A B              A / B as %.2f ("n/a" when B is not positive)
    stats.py sum V...               the sum
    stats.py elapsed T0 T1 [DIGITS] T1 - T0 (epoch seconds) with DIGITS decimals (default 2)
    stats.py le A B                 exit 0 when A <= B
    stats.py per-core SIZE CPU      SIZE bytes / CPU seconds in MB/s, %.0f (0 when CPU is not positive)
    stats.py ceiling SIZE CPU MBS   "N MB/s (measured = P %)": what CPU seconds of curl allow, MBS against it
    stats.py busy "B0 I0" "B1 I1"   share of the machine busy between two /proc/stat samples, %.0f
    stats.py get MBS HZ "U0 S0" "U1 S1" "CU CS" "MU0 MS0 SI0 I0" "MU1 MS1 SI1 I1" X Y
                                    one GET from server CPU samples (user system seconds), curl's user and
                                    system seconds and two /proc/stat samples (jiffies at HZ: user, system,
                                    softirq, idle): "MB/s server-user server-sys curl-user curl-sys
                                    machine-user machine-sys machine-softirq busy-% X Y" (seconds)
    stats.py pergb SIZE V...        each V (seconds per SIZE bytes) in seconds per GB (1e9 bytes), %.2f
    stats.py pairsum "A..." "B..."  the element-wise sums of two equally long lists
    stats.py machine "MU..." "MS..." "CU..." "CS..."
                                    per run: machine user + system minus curl's user + system
    stats.py msp V...               "median (min-max)"
    stats.py par N SIZE T0 T1 CPU0 CPU1 CURL-CPU S0 S1
                                    N parallel GETs: "aggregate-MB/s server-CPU/GET curl-CPU/GET busy-% wall-s"
"""
import statistics
import sys


def fmt_median(values):
    values = sorted(values, key=float)
    if len(values) % 2:
        return values[len(values) // 2]
    return f"{statistics.median(float(v) for v in values):.2f}"


def ratio(a, b):
    return f"{float(a) / float(b):.2f}" if float(b) > 0 else "n/a"


def busy(s0, s1):
    (b0, i0), (b1, i1) = (map(float, s.split()) for s in (s0, s1))
    total = (b1 - b0) + (i1 - i0)
    return 100 * (b1 - b0) / total if total > 0 else 0


def per_core(size, cpu):
    return f"{float(size) / float(cpu) / 1e6:.0f}" if float(cpu) > 0 else "0"


def ceiling(size, cpu, mbs):
    size, cpu, mbs = float(size), float(cpu), float(mbs)
    if cpu <= 0:
        return "n/a"
    return f"{size / cpu / 1e6:.0f} MB/s (measured = {100 * mbs * cpu * 1e6 / size:.0f} %)"


def get(mbs, hz, c0, c1, ccpu, s0, s1, x, y):
    (u0, y0), (u1, y1), (cu, cs) = (map(float, v.split()) for v in (c0, c1, ccpu))
    m0, m1 = ([float(v) / float(hz) for v in s.split()] for s in (s0, s1))
    mu, ms, msi, idle = (b - a for a, b in zip(m0, m1))
    pct = 100 * (mu + ms) / (mu + ms + idle) if mu + ms + idle > 0 else 0
    return (f"{float(mbs) / 1e6:.0f} {u1 - u0:.2f} {y1 - y0:.2f} {cu:.2f} {cs:.2f} "
            f"{mu:.2f} {ms:.2f} {msi:.2f} {pct:.0f} {x} {y}")


def floats(v):
    return [float(x) for x in v.split()]


def pairsum(a, b):
    return " ".join(f"{x + y:.2f}" for x, y in zip(floats(a), floats(b)))


def machine(mu, ms, cu, cs):
    rows = zip(floats(mu), floats(ms), floats(cu), floats(cs))
    return " ".join(f"{u + s - c - d:.2f}" for u, s, c, d in rows)


def msp(values):
    return f"{fmt_median(values)} ({min(values, key=float)}-{max(values, key=float)})"


def par(n, size, t0, t1, c0, c1, ccpu, s0, s1):
    n, wall = int(n), float(t1) - float(t0)
    agg = n * float(size) / wall / 1e6 if wall > 0 else 0
    cpu = (float(c1) - float(c0)) / n
    return f"{agg:.0f} {cpu:.2f} {float(ccpu) / n:.2f} {busy(s0, s1):.0f} {wall:.2f}"


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "median":
        print(fmt_median(args))
    elif cmd == "ratio":
        print(ratio(*args))
    elif cmd == "sum":
        print(f"{sum(float(v) for v in args):g}")
    elif cmd == "elapsed":
        digits = int(args[2]) if len(args) > 2 else 2
        print(f"{float(args[1]) - float(args[0]):.{digits}f}")
    elif cmd == "le":
        return 0 if float(args[0]) <= float(args[1]) else 1
    elif cmd == "per-core":
        print(per_core(*args))
    elif cmd == "ceiling":
        print(ceiling(*args))
    elif cmd == "busy":
        print(f"{busy(*args):.0f}")
    elif cmd == "get":
        print(get(*args))
    elif cmd == "pergb":
        print(" ".join(f"{float(v) / (float(args[0]) / 1e9):.2f}" for v in args[1:]))
    elif cmd == "pairsum":
        print(pairsum(*args))
    elif cmd == "machine":
        print(machine(*args))
    elif cmd == "msp":
        print(msp(args))
    elif cmd == "par":
        print(par(*args))
    else:
        print(f"stats.py: unknown command {cmd}", file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
