# shellcheck shell=bash
# A fleet's network and config (sourced by scripts/e2e.sh and bench/run.sh): a LAN namespace holding a
# bridge and the S3 store's address, namespaces joined to that bridge by veth pairs (the appliances, a
# client, and the namespace of the upstreams as the way to the "internet"), and the `[storage]` and
# `[fleet]` sections of each appliance's config. Needs proc.sh, netns.sh and garage.sh (GARAGE_*).
# State: FLEET_IPS (the appliances' addresses, appliance N at index N-1), FLEET_PREFIX (the key prefix
# in the bucket), FLEET_PEER_TIMEOUT, FLEET_SIZE (how many of FLEET_IPS are peers; default all).

FLEET_IPS=() FLEET_PREFIX=fleet/ FLEET_PEER_TIMEOUT=3s FLEET_SIZE=''

# lan_up LAN-NS IP/PREFIX: the namespace with the bridge lan0 (holding IP), loopback up, no forwarding
lan_up() {
    ip netns add "$1"
    ip -n "$1" link add lan0 type bridge
    ip -n "$1" addr add "$2" dev lan0
    ip -n "$1" link set lo up
    ip -n "$1" link set lan0 up
    ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=0
    mkdir -p "/etc/netns/$1"
}
# lan_join LAN-NS NS IFNAME IP/PREFIX: veth IFNAME in NS (an existing namespace) with the address, its
# peer l-IFNAME on the bridge
lan_join() {
    local lan=$1 ns=$2 ifn=$3
    ip link add "$ifn" netns "$ns" type veth peer name "l-$ifn" netns "$lan"
    ip -n "$lan" link set "l-$ifn" master lan0
    ip -n "$lan" link set "l-$ifn" up
    ip -n "$ns" addr add "$4" dev "$ifn"
    ip -n "$ns" link set "$ifn" up
}
# lan_node LAN-NS NS IFNAME IP/PREFIX [VIA CIDR...]: a new namespace on the LAN (loopback up, no
# forwarding, routes to each CIDR via VIA, /etc/netns/NS with a resolver that answers nothing)
lan_node() {
    local lan=$1 ns=$2 ifn=$3 addr=$4 via cidr
    shift 4
    via=${1:-}
    (($# == 0)) || shift
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
    lan_join "$lan" "$ns" "$ifn" "$addr"
    for cidr in "$@"; do ip -n "$ns" route add "$cidr" via "$via"; done
    mkdir -p "/etc/netns/$ns"
    echo "nameserver 127.0.0.9" >"/etc/netns/$ns/resolv.conf"
}

# fleet_node_toml N DIR DNS-UPSTREAM ALLOW ANSWER...: the top of appliance N's config: state in DIR/state,
# DNS and HTTPS on its address, admin on 127.0.0.1:ADMIN_PORT, the upstreams' CA $PKI/ca.crt, access.allow
# ALLOW (a TOML list's inside) and dns.answer_ipv4 = the ANSWER addresses
fleet_node_toml() {
    local ip=${FLEET_IPS[$1 - 1]} d=$2 up=$3 allow=$4 answers=''; shift 4
    answers=$(printf '"%s", ' "$@")
    cat <<EOF
state_dir = "$d/state"
[dns]
listen = ["$ip:53"]
answer_ipv4 = [${answers%, }]
answer_ipv6 = []
upstream = ["$up"]
[tls]
listen = ["$ip:443"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[upstream]
extra_ca = ["$PKI/ca.crt"]
[access]
allow = [$allow]
EOF
}

# fleet_toml N: the [storage] and [fleet] sections of appliance N (1-based): the Garage bucket through
# node N's S3 endpoint (path-style), the first FLEET_SIZE appliances as peers, itself as node (no
# [fleet] when FLEET_SIZE is 1: one appliance on the shared tier)
fleet_toml() {
    local n=$1 size=${FLEET_SIZE:-${#FLEET_IPS[@]}} peers='' i
    for ((i = 0; i < size; i++)); do peers+="\"${FLEET_IPS[i]}:443\", "; done
    cat <<EOF

[storage]
backend = "s3"
endpoint = "${GARAGE_ENDPOINTS[(n - 1) % ${#GARAGE_ENDPOINTS[@]}]}"
bucket = "$GARAGE_BUCKET"
region = "$GARAGE_REGION"
prefix = "$FLEET_PREFIX"
virtual_hosted_style = false
access_key_id = "$GARAGE_KEY_ID"
secret_access_key_file = "$GARAGE_DIR/secret_access_key"
EOF
    ((size > 1)) || return 0
    cat <<EOF

[fleet]
peers = [${peers%, }]
node = "${FLEET_IPS[n - 1]}:443"
peer_timeout = "$FLEET_PEER_TIMEOUT"
EOF
}

# fleet_share_ca FROM-STATE TO-STATE...: the CA folder certs/ of one appliance copied to the others with
# `cp -a` (modes kept: ca.key stays 0600, which regcache insists on)
fleet_share_ca() {
    local from=$1 to; shift
    for to in "$@"; do
        mkdir -p "$to"
        rm -rf "$to/certs"
        cp -a "$from/certs" "$to/certs"
    done
}
