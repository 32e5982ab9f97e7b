# shellcheck shell=bash
# Network namespaces of a test world (sourced by scripts/e2e.sh and bench/run.sh): an appliance and a
# client namespace joined by a veth pair, hermetic mounts for clients, dockerd inside a namespace, and
# their removal (also of a crashed run's leftovers). Needs proc.sh. State: NETNS_DIR_CREATED and
# RUN_NETNS_CREATED (whether /etc/netns and /run/netns were ours to remove at the end).

NETNS_DIR_CREATED=0 RUN_NETNS_CREATED=0

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# Kill whatever still runs inside one of our namespaces (children such as dockerd's containerd),
# by PID, then delete the namespace and its /etc/netns folder.
remove_ns() {
    local ns=$1 pid
    if ns_exists "$ns"; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        sleep 0.2
        ip netns del "$ns" 2>/dev/null || true
    fi
    rm -rf "/etc/netns/$ns"
}
remove_stale_ns() { # NS...: leftovers of a crashed run (fixed names, so the next run finds them)
    local ns
    for ns in "$@"; do
        if ns_exists "$ns" || [[ -e /etc/netns/$ns ]]; then
            say "INFO: removing stale namespace $ns from an earlier run"
            remove_ns "$ns"
        fi
    done
}
remove_netns_all() { # NS...: the namespaces, then /etc/netns and /run/netns when they were ours and are empty
    local ns
    for ns in "$@"; do remove_ns "$ns"; done
    if [[ $NETNS_DIR_CREATED == 1 ]]; then rmdir /etc/netns 2>/dev/null; fi
    # ip netns add made /run/netns (a shared bind mount of itself); undo that when it was ours and is empty
    if [[ $RUN_NETNS_CREATED == 1 && -z $(ip netns list) ]]; then
        umount -n /run/netns 2>/dev/null
        rmdir /run/netns 2>/dev/null
    fi
    return 0
}

# netns_pair APP-NS APP-IP CLI-NS CLI-IP: both namespaces, a veth pair named after them (both ends
# inside), loopback up, ip_forward off, and /etc/netns/NS folders (resolv.conf, hosts, trust stores).
netns_pair() {
    local app=$1 app_ip=$2 cli=$3 cli_ip=$4 ns
    [[ -d /etc/netns ]] || { mkdir /etc/netns; NETNS_DIR_CREATED=1; }
    [[ -d /run/netns ]] || RUN_NETNS_CREATED=1      # ip netns add creates it
    # ip netns exec binds /etc/netns/NS/docker and /etc/netns/NS/containers only over folders that exist.
    mkdir -p /etc/docker /etc/containers
    ip netns add "$app"
    ip netns add "$cli"
    ip link add "$app" netns "$app" type veth peer name "$cli" netns "$cli"
    ip -n "$app" addr add "$app_ip/24" dev "$app"
    ip -n "$cli" addr add "$cli_ip/24" dev "$cli"
    for ns in "$app" "$cli"; do
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
        ip -n "$ns" link set "$ns" up
        mkdir -p "/etc/netns/$ns"
    done
}

# Clients write state outside their --root flags (containers/image's blob-info cache in /var/lib/containers,
# podman's /run/containers, dockerd's /run/docker/plugins): they get private tmpfs mounts on /run and
# /var/lib inside the mount namespace that `ip netns exec` creates, so nothing is left on the host.
# (This also hides a system containerd socket from dockerd, which then starts its own.)
hermetic_mounts() { # PREFIX: sets HERMETIC_MOUNTS (the tmpfs names start with PREFIX)
    HERMETIC_MOUNTS="mount -n -t tmpfs -o size=64m,mode=755 $1-run /run && mount -n -t tmpfs -o size=64m,mode=755 $1-varlib /var/lib"
}
isolated() { # NS CMD...
    local ns=$1; shift
    ip netns exec "$ns" sh -c "$HERMETIC_MOUNTS"' && exec "$@"' sh "$@"
}

# dockerd_dir DIR DAEMON-JSON: data and exec roots, daemon.json, and cgroups.sh: `ip netns exec` remounts
# /sys without the cgroup mounts, so dockerd's mount namespace re-creates the root namespace's set.
dockerd_dir() {
    mkdir -p "$1/data" "$1/exec"
    printf '%s\n' "$2" >"$1/daemon.json"
    awk '$2 ~ "^/sys/fs/cgroup" && ($3 == "tmpfs" || $3 == "cgroup" || $3 == "cgroup2") {
            printf "mkdir -p %s && mount -n -t %s -o %s %s %s\n", $2, $3, $4, $1, $2 }' /proc/self/mounts >"$1/cgroups.sh"
}
# dockerd_sh DIR [SHELL-COMMANDS]: the `sh -c` text that runs dockerd on DIR (socket DIR/docker.sock);
# SHELL-COMMANDS (mounts) run in its mount namespace before it
dockerd_sh() {
    local d=$1 pre=${2:-}
    printf '%s' ". '$d/cgroups.sh' && $HERMETIC_MOUNTS && ${pre:+$pre && }exec dockerd --data-root '$d/data' \
        --exec-root '$d/exec' --pidfile '$d/docker.pid' -H 'unix://$d/docker.sock' --config-file '$d/daemon.json' \
        --iptables=false --ip-forward=false --bridge=none --storage-driver=vfs"
}

teardown_world() { # NS...: every tracked process stopped (last started first), then the namespaces removed
    stop_tracked
    remove_netns_all "$@"
}

# on_exit KEEP-FUNC NS...: the EXIT trap: stops what was started and removes the namespaces, then the
# work dir $W unless KEEP-FUNC RC says to keep it; exits with the status the script had
on_exit() {
    local rc=$? keep=$1; shift
    set +e
    trap - EXIT INT TERM
    teardown_world "$@"
    if [[ -n $W && -d $W ]]; then
        if "$keep" "$rc"; then say "$LIB_TAG: work dir kept: $W"; else rm -rf "$W"; fi
    fi
    exit "$rc"
}
