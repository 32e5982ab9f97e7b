# shellcheck shell=bash
# A Garage cluster (Garage 2.5, an S3-compatible distributed object store written in Rust) for the fleet
# tests (sourced by scripts/e2e.sh and bench/run.sh). Needs proc.sh; the caller sets LOGS.
#
# Three nodes in one network namespace, each with its own config, metadata and data folders, RPC port
# and S3 port, all with the same rpc_secret. Node 1 connects the others (`garage node connect`), and
# every node's config then lists them all in bootstrap_peers: a cluster stopped whole finds itself
# again when restarted (without it the restarted nodes never reconnected here). The layout gives each
# node a role in a zone of its own (10 GB each: a weight, not a quota) and replication_factor = 3:
# every object is on all three nodes, a write needs two of them (consistency_mode "consistent", the
# default), so one node down keeps the store working. Then one access key and one bucket it may read,
# write and own.
#
#   garage_up NS IP DIR BUCKET   starts the cluster on IP (nodes i = 1..3: S3 on IP:3900+10(i-1), RPC on
#                                IP:3901+10(i-1)); sets GARAGE_ENDPOINT (node 1's S3 URL), GARAGE_ENDPOINTS
#                                (every node's), GARAGE_KEY_ID, GARAGE_SECRET (in DIR/secret_access_key, 0600),
#                                GARAGE_REGION, GARAGE_BUCKET
#   garage_stop / garage_start_ready   stop every node by PID / start them again on the same folders and
#                                wait until each node's S3 API answers
#   garage_objects PREFIX        the keys in the bucket under PREFIX (S3 ListObjectsV2 with curl's SigV4)
#   garage_cli N ARGS...         the garage CLI against node N
#
# The binary: GARAGE_BIN, else /opt/garage/bin/garage (scripts/test.sh's install step builds it there with
# `cargo install garage --locked --version 2.5.0 --root /opt/garage`), else garage on PATH.

GARAGE_NODES=3
GARAGE_REGION=garage
GARAGE_PIDS=() GARAGE_NS='' GARAGE_IP='' GARAGE_DIR='' GARAGE_BUCKET='' GARAGE_ENDPOINT='' GARAGE_ENDPOINTS=()
GARAGE_KEY_ID='' GARAGE_SECRET=''

garage_bin() { # prints the binary's path, or fails
    local b
    for b in "${GARAGE_BIN:-}" /opt/garage/bin/garage "$(command -v garage 2>/dev/null || true)"; do
        [[ -n $b && -x $b ]] && { echo "$b"; return 0; }
    done
    return 1
}
garage_s3_port() { echo $((3900 + 10 * ($1 - 1))); }
garage_rpc_port() { echo $((3901 + 10 * ($1 - 1))); }
garage_cli() { # N ARGS...
    local n=$1; shift
    ip netns exec "$GARAGE_NS" "$(garage_bin)" -c "$GARAGE_DIR/n$n/garage.toml" "$@"
}

garage_config() { # N SECRET: DIR/nN/garage.toml
    local n=$1 d=$GARAGE_DIR/n$1
    mkdir -p "$d/meta" "$d/data"
    cat >"$d/garage.toml" <<EOF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "sqlite"
replication_factor = $GARAGE_NODES
# the blobs are compressed layers or random bytes: zstd would only cost CPU
compression_level = "none"
rpc_bind_addr = "$GARAGE_IP:$(garage_rpc_port "$n")"
rpc_public_addr = "$GARAGE_IP:$(garage_rpc_port "$n")"
rpc_secret = "$2"
# filled in by garage_layout once every node's ID is known: how the nodes find each other after a restart
bootstrap_peers = []

[s3_api]
s3_region = "$GARAGE_REGION"
api_bind_addr = "$GARAGE_IP:$(garage_s3_port "$n")"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$d/garage.toml"
}

garage_start() { # every node, on the folders garage_up made; waits until each answers its CLI
    local n pid bin
    bin=$(garage_bin) || { say "$LIB_TAG: no garage binary (GARAGE_BIN, /opt/garage/bin/garage, PATH)" >&2; return 1; }
    GARAGE_PIDS=()
    for ((n = 1; n <= GARAGE_NODES; n++)); do
        bg "garage-n$n" "$GARAGE_NS" "$bin" -c "$GARAGE_DIR/n$n/garage.toml" server
        GARAGE_PIDS+=("$!")
    done
    for ((n = 1; n <= GARAGE_NODES; n++)); do
        pid=${GARAGE_PIDS[n - 1]}
        wait_for "garage node $n" "$pid" 100 0.2 garage_cli "$n" node id -q || return 1
    done
}
garage_stop() { stop_forget "${GARAGE_PIDS[@]}"; GARAGE_PIDS=(); }
garage_start_ready() { # garage_start, then every node's S3 API answers a signed list of the bucket
    local ep
    garage_start || return 1
    for ep in "${GARAGE_ENDPOINTS[@]}"; do
        wait_for "garage S3 API at $ep" - 100 0.2 garage_ready "$ep" || return 1
    done
}

# garage_s3 CURL-ARGS... URL: curl signing with SigV4 (Garage wants x-amz-content-sha256; an unsigned
# payload is allowed)
garage_s3() {
    ip netns exec "$GARAGE_NS" curl -sS --max-time 10 -f --aws-sigv4 "aws:amz:$GARAGE_REGION:s3" \
        --user "$GARAGE_KEY_ID:$GARAGE_SECRET" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}
# garage_objects PREFIX: keys under PREFIX, one a line (ListObjectsV2, first 1000 keys)
garage_objects() {
    garage_s3 "$GARAGE_ENDPOINT/$GARAGE_BUCKET?list-type=2&prefix=$(printf %s "${1:-}" | jq -sRr @uri)" | grep -oE '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g'
}
garage_ready() { garage_s3 -o /dev/null "$1/$GARAGE_BUCKET?list-type=2&max-keys=1"; } # ENDPOINT

garage_layout() { # node 1 connects the others; a role per node, zone zN; layout version 1
    local n id ids=() peers=''
    for ((n = 1; n <= GARAGE_NODES; n++)); do
        id=$(garage_cli "$n" node id -q) || return 1
        ids+=("${id%%@*}")
        peers+="\"$id\", "
        ((n == 1)) || garage_cli 1 node connect "$id" || return 1
    done
    for ((n = 1; n <= GARAGE_NODES; n++)); do
        sed -i "s|^bootstrap_peers = .*|bootstrap_peers = [${peers%, }]|" "$GARAGE_DIR/n$n/garage.toml"
    done
    for ((n = 1; n <= GARAGE_NODES; n++)); do
        garage_cli 1 layout assign -z "z$n" -c 10G "${ids[n - 1]}" || return 1
    done
    garage_cli 1 layout apply --version 1
}

garage_key_bucket() { # one key, one bucket it reads, writes and owns; GARAGE_KEY_ID/GARAGE_SECRET
    local out
    out=$(garage_cli 1 key create regcache-fleet) || return 1
    GARAGE_KEY_ID=$(awk '/^Key ID:/ {print $3}' <<<"$out")
    GARAGE_SECRET=$(awk '/^Secret key:/ {print $3}' <<<"$out")
    [[ $GARAGE_KEY_ID == GK* && -n $GARAGE_SECRET ]] || { say "no key in: $out" >&2; return 1; }
    ( umask 077; printf '%s\n' "$GARAGE_SECRET" >"$GARAGE_DIR/secret_access_key" )
    garage_cli 1 bucket create "$GARAGE_BUCKET" &&
        garage_cli 1 bucket allow --read --write --owner "$GARAGE_BUCKET" --key regcache-fleet
}

# garage_up NS IP DIR BUCKET (see the top); output to $LOGS/garage-setup.log
garage_up() {
    GARAGE_NS=$1 GARAGE_IP=$2 GARAGE_DIR=$3 GARAGE_BUCKET=$4
    local n secret ep
    secret=$(openssl rand -hex 32)
    GARAGE_ENDPOINTS=()
    for ((n = 1; n <= GARAGE_NODES; n++)); do
        garage_config "$n" "$secret"
        GARAGE_ENDPOINTS+=("http://$GARAGE_IP:$(garage_s3_port "$n")")
    done
    GARAGE_ENDPOINT=${GARAGE_ENDPOINTS[0]}
    {
        garage_start && garage_layout && garage_key_bucket || return 1
        # the layout reaches every node, then each one's S3 API answers a signed list of the bucket
        for ep in "${GARAGE_ENDPOINTS[@]}"; do
            wait_for "garage S3 API at $ep" - 100 0.2 garage_ready "$ep" || return 1
        done
        garage_cli 1 status
        garage_cli 1 layout show
        echo "endpoints: ${GARAGE_ENDPOINTS[*]} region $GARAGE_REGION bucket $GARAGE_BUCKET key $GARAGE_KEY_ID"
    } >"$LOGS/garage-setup.log" 2>&1
}
