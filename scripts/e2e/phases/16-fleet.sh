# shellcheck shell=bash
# Phase fleet (issue 11): three appliances in namespaces of their own share one CA (one certs/ copied
# to each with `cp -a`), one S3 bucket on a three-node Garage 2.5 cluster (scripts/lib/garage.sh,
# replication_factor 3) and a [fleet] peer list, and answer DNS with all three addresses. A LAN namespace
# holds the bridge they hang on, with Garage on 10.79.0.5; APP joins it on 10.79.0.1 (the upstreams'
# /32s are routed there; a dnsmasq there forwards to the world's resolver). A client namespace FCLI on
# the LAN resolves through all three; a check that wants one appliance runs its client with a hosts
# file naming that appliance for every registry name (fl_via). Checks, as issue 11 lists them:
#   - one CA: the key's mode 0600 kept in every copy; a copy readable by others is refused;
#   - dig at each appliance: the three addresses;
#   - an image pulled through appliance 1 (skopeo), then through 2 (podman) and 3 (dockerd): no blob GET
#     at the upstream the second and third time (its own log), the blobs in the bucket;
#   - 4 clients on each of the 3 appliances start a cold FLEET_BIG_MIB MiB blob at once: one upstream GET,
#     every body hashes to the digest;
#   - the owner of a cold blob killed mid-fill (the upstream throttled with tc to make the fill last):
#     the other appliances' clients complete, a retry through them succeeds, the owner restarted serves
#     the blob with no upstream GET (the shared tier);
#   - the private-content attacks across appliances: quay.io's private layer cached via appliance 1 is
#     refused to anonymous and wrong-password clients through 2 and 3, and to a client forging the peer
#     header; Docker Hub's private repository refused anonymously through 2;
#   - appliance 1 stopped: the client (resolver list = the three, answers list all three) moves on;
#   - Garage stopped: pulls keep working, /metrics counts the store down and its errors; Garage back:
#     objects are uploaded again and shared, and what was filled meanwhile is uploaded.
# FLEET_BIG_MIB (default 512) sizes the concurrent blob. Everything the phase starts is stopped, its
# namespaces removed, at its end.
PHASE_NEEDS=(upstreams)

LAN_NS=rce2e-lan FCLI_NS=rce2e-fcli
FL_NS=(rce2e-f1 rce2e-f2 rce2e-f3)
LAN_GW=10.79.0.1 S3_IP=10.79.0.5 FCLI_IP=10.79.0.20
FLEET_IPS=(10.79.0.11 10.79.0.12 10.79.0.13)
FLEET_BIG_MIB=${FLEET_BIG_MIB:-512}
FL_KILL_MIB=128
FL_PIDS=('' '' '') FL_FWD_PID=''

fcli() { ip netns exec "$FCLI_NS" "$@"; }
# fl_via N CMD...: CMD in FCLI (private /run and /var/lib) whose /etc/hosts names appliance N for
# every registry name, so that it talks to that appliance only
fl_via() {
    local n=$1; shift
    # shellcheck disable=SC2016
    ip netns exec "$FCLI_NS" sh -c "$HERMETIC_MOUNTS"' && mount -n --bind "$1" /etc/hosts && shift && exec "$@"' \
        sh "$FW/hosts.$n" "$@"
}
fl_curl() { local n=$1; shift; fl_via "$n" curl -sS --max-time 120 --cacert "$FW/ca.crt" "$@"; }
fl_skopeo() { local n=$1; shift; fl_via "$n" timeout 180 skopeo "$@"; }
# a dockerd in FCLI whose /etc/hosts names appliance 3 (it reads /etc/docker/certs.d, set up for FCLI)
FL_DOCKERD_PID=''
fl_docker() { DOCKER_HOST=unix://$FW/docker/docker.sock timeout 180 docker "$@"; }
fl_dockerd_start() {
    dockerd_dir "$FW/docker" "$DOCKERD_JSON"
    bg fleet-dockerd "$FCLI_NS" sh -c "$(dockerd_sh "$FW/docker" "mount -n --bind '$FW/hosts.3' /etc/hosts")"
    FL_DOCKERD_PID=$!
    wait_for "fleet dockerd" "$FL_DOCKERD_PID" 120 0.5 fl_docker info
}
fl_podman() {
    local n=$1 p=$FW/podman; shift
    mkdir -p "$p/root" "$p/runroot" "$p/tmp"
    fl_via "$n" timeout 180 podman --root "$p/root" --runroot "$p/runroot" --tmpdir "$p/tmp" --storage-driver vfs \
        --cgroup-manager cgroupfs --events-backend file "$@"
}

# ---------------------------------------------------------------------------------------------------
# setup

fl_network() { # LAN (bridge, Garage's address), APP on it, the three appliances, the client
    local n
    remove_stale_ns "$LAN_NS" "$FCLI_NS" "${FL_NS[@]}"
    EXTRA_NS+=("$LAN_NS" "$FCLI_NS" "${FL_NS[@]}")
    lan_up "$LAN_NS" "$S3_IP/24"
    lan_join "$LAN_NS" "$APP_NS" rce2e-lan "$LAN_GW/24"
    for n in 1 2 3; do
        lan_node "$LAN_NS" "${FL_NS[n - 1]}" "rce2e-f$n" "${FLEET_IPS[n - 1]}/24" "$LAN_GW" 198.51.100.0/24
    done
    lan_node "$LAN_NS" "$FCLI_NS" rce2e-fcli "$FCLI_IP/24"
    # the client's resolvers: the three appliances, a dead one skipped after a second
    printf 'nameserver %s\n' "${FLEET_IPS[@]}" >"/etc/netns/$FCLI_NS/resolv.conf"
    echo "options timeout:1 attempts:2" >>"/etc/netns/$FCLI_NS/resolv.conf"
    for n in 1 2 3; do
        { echo "127.0.0.1 localhost"; printf "${FLEET_IPS[n - 1]} %s\n" "${INTERCEPTED[@]}"; } >"$FW/hosts.$n"
    done
    # the appliances' dns.upstream: a forwarder on APP's LAN address to the world's resolver
    bg fleet-dns-forwarder "$APP_NS" dnsmasq -k -C /dev/null --log-facility=- --user=root --pid-file="$FW/dnsmasq.pid" \
        --port 53 --listen-address="$LAN_GW" --bind-interfaces --no-resolv --no-hosts --server="127.0.0.1#$DNSMASQ_PORT"
    FL_FWD_PID=$!
    for n in 1 2 3; do
        wait_for "fleet dns forwarder from appliance $n's namespace" "$FL_FWD_PID" 50 0.1 \
            ip netns exec "${FL_NS[n - 1]}" dig +time=1 +tries=1 "@$LAN_GW" "$NVCR_HOST" A || return 1
    done
    ip netns exec "${FL_NS[2]}" curl -sS --max-time 5 -o /dev/null --cacert "$PKI/ca.crt" --resolve "$NVCR_HOST:443:$NVCR_IP" \
        "https://$NVCR_HOST/v2/" && fcli dig +time=1 +tries=1 "@$LAN_GW" "$NVCR_HOST" A >/dev/null
}

fl_config() { # N: $FW/fN/config.toml
    local n=$1 d=$FW/f$1
    mkdir -p "$d/state"
    # every appliance answers with the whole fleet, in one order (clients move on from a dead one); the
    # access list admits the clients and the peers (an owner serves forwarded requests through it too)
    {
        fleet_node_toml "$n" "$d" "$LAN_GW:53" '"10.79.0.0/24", "127.0.0.0/8"' "${FLEET_IPS[@]}"
        printf '[cache]\nmanifest_ttl = "2s"\nauth_ttl = "2s"\n'
        fleet_toml "$n"
        printf '\n[[registry]]\nhost = "%s"\naliases = ["docker.io", "index.docker.io"]\nupstream = "https://%s"\n' \
            "$HUB_HOST" "$HUB_HOST"
        printf '[[registry]]\nhost = "%s"\n' "$AUTH_HOST" "$NVCR_HOST" "$QUAY_HOST"
    } >"$d/config.toml"
}

fl_start() { # N [LOG-SUFFIX]: appliance N in its namespace; FL_PIDS[N-1]
    local n=$1 name=fleet-regcache-$1${2:-}
    ip netns exec "${FL_NS[n - 1]}" "$BIN" serve --config "$FW/f$n/config.toml" >"$LOGS/$name.access.log" \
        2>"$LOGS/$name.log" </dev/null 9<&- &
    FL_PIDS[n - 1]=$!
    track_pid "$!" "$name"
    wait_for "fleet appliance $n" "$!" 150 0.2 grep -q 'listening for https on' "$LOGS/$name.log"
}
fl_stop() { stop_forget "${FL_PIDS[$1 - 1]}"; FL_PIDS[$1 - 1]=''; } # N

# the CA made by appliance 1's `ca cert`, its certs/ copied to 2 and 3 with cp -a
fl_share_ca() {
    ip netns exec "${FL_NS[0]}" "$BIN" ca cert --config "$FW/f1/config.toml" >"$FW/ca.crt"
    fleet_share_ca "$FW/f1/state" "$FW/f2/state" "$FW/f3/state"
    local n mode fp fp1=''
    for n in 1 2 3; do
        mode=$(stat -c '%a %U' "$FW/f$n/state/certs/ca.key")
        fp=$(ip netns exec "${FL_NS[n - 1]}" "$BIN" ca cert --fingerprint --config "$FW/f$n/config.toml")
        echo "appliance $n: ca.key mode $mode, CA fingerprint $fp"
        expect_eq "$mode" "600 root" "appliance $n's ca.key mode and owner"
        [[ -n $fp1 ]] || fp1=$fp
        expect_eq "$fp" "$fp1" "appliance $n's CA fingerprint"
    done
}
fl_key_mode_refused() { # a copy of certs/ whose key others may read is refused
    local d=$FW/badkey rc=0
    mkdir -p "$d/state"
    cp -a "$FW/f3/state/certs" "$d/state/certs"
    chmod 644 "$d/state/certs/ca.key"
    sed "s|^state_dir = .*|state_dir = \"$d/state\"|" "$FW/f3/config.toml" >"$d/config.toml"
    ip netns exec "${FL_NS[2]}" timeout 10 "$BIN" ca cert --config "$d/config.toml" >"$d/out" 2>&1 || rc=$?
    tail -n 3 "$d/out"
    echo "exit code $rc"
    [[ $rc != 0 && $rc != 124 ]] && grep -q "$d/state/certs/ca.key" "$d/out"
}
fl_same_ca_served() { # every appliance's admin /ca.crt is the shared CA
    local n
    for n in 1 2 3; do
        ip netns exec "${FL_NS[n - 1]}" curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/ca.crt" | cmp - "$FW/ca.crt"
        http_code_in 200 fl_curl "$n" "https://$NVCR_HOST/v2/"
        echo "appliance $n: /ca.crt is the shared CA; https://$NVCR_HOST/v2/ verifies against it"
    done
}

# fl_seed KEY REPO GEN-ARGS...: an nvcr.io image only this phase reads (state/digests as world.sh's seed)
fl_seed() { seed "$1" "$NVCR_HOST" "$2" 1 --format docker "${@:3}" >>"$LOGS/fleet-seed.log" 2>&1; }
fl_seed_blob() { # KEY REPO MIB: a random blob, no manifest; DIGEST[KEY]
    local f=$FW/blob.bin d
    head -c "$(($3 << 20))" /dev/urandom >"$f"
    d=sha256:$(sha256sum "$f" | cut -d' ' -f1)
    push_blob "$NVCR_HOST" "$2" "$f" "$d" || { rm -f "$f"; echo "push of $2's $3 MiB blob failed"; return 1; }
    rm -f "$f"
    DIGEST[$1]=$d
}
fl_setup() { # (run_check_here: every step checked here)
    fl_network || { echo "the fleet's network is not up"; return 1; }
    garage_up "$LAN_NS" "$S3_IP" "$FW/garage" regcache || { cat "$LOGS/garage-setup.log"; return 1; }
    tail -n 1 "$LOGS/garage-setup.log"
    local n
    for n in 1 2 3; do fl_config "$n" || return 1; done
    fl_seed fleet-app fleet/app --layer-mib 1 --layer-mib 6 && fl_seed fleet-down fleet/down --layer-mib 2 &&
        fl_seed fleet-after fleet/after --layer-mib 2 || { echo "seeding failed (logs/fleet-seed.log)"; return 1; }
    fl_seed_blob fleet-big fleet/big "$FLEET_BIG_MIB" && fl_seed_blob fleet-kill fleet/kill "$FL_KILL_MIB" || return 1
    load_digests
    echo "seeded: fleet/app, fleet/down, fleet/after, fleet/big ${DIGEST[fleet-big]}, fleet/kill ${DIGEST[fleet-kill]}"
}

# ---------------------------------------------------------------------------------------------------
# helpers of the checks

# upstream logs: the world's process log of nvcr.io / quay.io (after the offline phase, the "-again" one)
fl_log() { case $1 in nvcr) echo "$LOGS/${PIDNAME[${UPSTREAM_PIDS[2]}]}.log" ;; quay) echo "$LOGS/${PIDNAME[${UPSTREAM_PIDS[3]}]}.log" ;; esac; }
fl_mark() { wc -l <"$(fl_log "$1")"; } # nvcr|quay: lines so far
# fl_blob_gets nvcr|quay MARK REPO [DIGEST]: blob GETs of REPO the upstream answered since line MARK
# (distribution logs "response completed" once the response is done)
fl_blob_gets() {
    tail -n "+$(($2 + 1))" "$(fl_log "$1")" |
        grep -cE "msg=\"response completed[^\"]*\" .*http\\.request\\.method=GET .*http\\.request\\.uri=\"?/v2/$3/blobs/${4:-sha256:}" || true
}
fl_settle() { sleep 0.5; } # the upstream's log line follows the end of its response
fl_blobs_of() { awk '$1 == "blob" {print $2}' "$W/images/$1/push-plan"; } # KEY
# fl_in_bucket SECONDS DIGEST...: every DIGEST is under FLEET_PREFIX in the bucket within SECONDS
fl_in_bucket() {
    local secs=$1 i d missing; shift
    for ((i = 0; i < secs * 4; i++)); do
        garage_objects "$FLEET_PREFIX" >"$FW/objects" 2>/dev/null || true
        missing=''
        for d in "$@"; do grep -qF "${d#sha256:}" "$FW/objects" || missing+=" $d"; done
        [[ -n $missing ]] || { echo "in the bucket after $((i / 4)) s: $*"; return 0; }
        sleep 0.25
    done
    echo "not in the bucket after $secs s:$missing"; echo "bucket keys:"; head -n 40 "$FW/objects"
    return 1
}
# fl_get N CREDS PATH [CURL-ARGS...]: GET through appliance N (CREDS user:pass or -); prints
# "HTTP-CODE X-CACHE BODY-DIGEST"
fl_get() {
    local n=$1 creds=() out; shift
    [[ $1 != - ]] && creds=(-u "$1")
    out=$(fl_curl "$n" "${creds[@]}" -o "$FW/body" -w '%{http_code} %header{x-cache}' "${@:3}" "https://$QUAY_HOST$2") || out="000 -"
    echo "$out $(sha256_of "$FW/body" 2>/dev/null || echo -)"
}
fl_copy_ok() { # N REF KEY: skopeo copies REF through appliance N; the digest is the pushed one
    local got
    got=$(fl_skopeo "$1" inspect --format '{{.Digest}}' "docker://$2")
    expect_eq "$got" "${DIGEST[$3]}" "digest of $2 through appliance $1"
    rm -rf "$FW/oci-$3-$1"
    fl_skopeo "$1" copy "docker://$2" "oci:$FW/oci-$3-$1:x" >/dev/null
}

# ---------------------------------------------------------------------------------------------------
# checks

fl_dns_answers() {
    local n got
    for n in 1 2 3; do
        got=$(fcli dig +time=2 +tries=1 +short "@${FLEET_IPS[n - 1]}" "$NVCR_HOST" A | paste -sd' ')
        echo "dig @${FLEET_IPS[n - 1]} $NVCR_HOST A: $got"
        expect_eq "$got" "${FLEET_IPS[*]}" "A records from appliance $n"
    done
}

fl_shared_pull() { # through 1 (skopeo), then 2 (podman) and 3 (dockerd): no blob GET at the upstream
    local m got
    m=$(fl_mark nvcr)
    fl_copy_ok 1 "$NVCR_HOST/fleet/app:1" fleet-app
    fl_settle
    echo "through appliance 1: $(fl_blob_gets nvcr "$m" fleet/app) upstream blob GETs"
    # shellcheck disable=SC2046
    fl_in_bucket 30 $(fl_blobs_of fleet-app)
    m=$(fl_mark nvcr)
    fl_podman 2 pull -q "$NVCR_HOST/fleet/app:1"
    got=$(fl_podman 2 image inspect --format '{{.Digest}}' "$NVCR_HOST/fleet/app:1")
    expect_eq "$got" "${DIGEST[fleet-app]}" "podman's digest through appliance 2"
    fl_docker pull -q "$NVCR_HOST/fleet/app:1"
    got=$(fl_docker image inspect --format '{{join .RepoDigests " "}}' "$NVCR_HOST/fleet/app:1")
    echo "dockerd's RepoDigests through appliance 3: $got"
    [[ " $got " == *"@${DIGEST[fleet-app]} "* ]] || { echo "the pushed digest is not among them"; return 1; }
    fl_settle
    expect_eq "$(fl_blob_gets nvcr "$m" fleet/app)" 0 "upstream blob GETs of fleet/app through appliances 2 and 3"
}

# FL_PAR_SH CA DIR URL HOST PER-APPLIANCE IP...: PER-APPLIANCE curls per IP at once, each hashing its body;
# DIR/h.N.I (headers), DIR/sum.N.I, DIR/err.N.I
# shellcheck disable=SC2016
FL_PAR_SH='ca=$1 dir=$2 url=$3 host=$4 per=$5; shift 5; n=0
for ip in "$@"; do
    n=$((n + 1))
    for ((i = 1; i <= per; i++)); do
        { curl -sS --max-time 300 --cacert "$ca" --resolve "$host:443:$ip" -D "$dir/h.$n.$i" -o - "$url" |
            sha256sum >"$dir/sum.$n.$i"; } 2>"$dir/err.$n.$i" &
    done
done
wait'
# fl_par_report DIR DIGEST PER [SKIP-N]: one line per client; DIR/count: "good bad" (not counting appliance SKIP-N)
fl_par_report() {
    local dir=$1 digest=$2 per=$3 skip=${4:-0} n i code xc sum good=0 bad=0
    for n in 1 2 3; do
        for ((i = 1; i <= per; i++)); do
            code=$(awk 'NR == 1 {print $2}' "$dir/h.$n.$i" 2>/dev/null)
            xc=$(awk 'tolower($1) == "x-cache:" {print $2}' "$dir/h.$n.$i" 2>/dev/null | tr -d '\r')
            sum=sha256:$(cut -d' ' -f1 "$dir/sum.$n.$i")
            echo "appliance $n client $i: HTTP ${code:-none} x-cache ${xc:-none} $([[ $sum == "$digest" ]] && echo 'body ok' || echo "body $sum") $(head -c 200 "$dir/err.$n.$i")"
            [[ $n == "$skip" ]] && continue
            if [[ $code == 200 && $sum == "$digest" ]]; then good=$((good + 1)); else bad=$((bad + 1)); fi
        done
    done
    echo "$good $bad" >"$dir/count"
}

fl_concurrent_cold() { # 4 clients on each appliance, one cold blob, one upstream GET
    local d=${DIGEST[fleet-big]} dir=$FW/big m t0 good bad i
    mkdir -p "$dir"
    m=$(fl_mark nvcr)
    t0=$(date +%s.%N)
    fcli bash -c "$FL_PAR_SH" par "$FW/ca.crt" "$dir" "https://$NVCR_HOST/v2/fleet/big/blobs/$d" "$NVCR_HOST" 4 "${FLEET_IPS[@]}"
    echo "12 GETs of the $FLEET_BIG_MIB MiB blob done in $("$PY" "$LIB/stats.py" elapsed "$t0" "$(date +%s.%N)") s"
    fl_par_report "$dir" "$d" 4
    read -r good bad <"$dir/count"
    for ((i = 0; i < 20; i++)); do [[ $(fl_blob_gets nvcr "$m" fleet/big) -ge 1 ]] && break; sleep 0.25; done
    fl_settle
    expect_eq "$bad" 0 "clients without a 200 and the whole blob"
    expect_eq "$good" 12 "clients with the whole blob"
    expect_eq "$(fl_blob_gets nvcr "$m" fleet/big "$d")" 1 "upstream GETs of the blob (its own log)"
    fl_in_bucket 60 "$d"
}

# bytes the upstream nvcr.io has sent on each established connection and had acknowledged: "PEER BYTES"
fl_acked() {
    app ss -Htni state established "( sport = :443 )" src "$NVCR_IP" |
        awk '/^[^ \t]/ { peer = $NF; next } match($0, /bytes_acked:[0-9]+/) { print peer, substr($0, RSTART + 12, RLENGTH - 12) }'
}
# fl_filling_appliance BEFORE-FILE: the appliance (its number) one of whose connections from the upstream
# carried more than 16 MiB since fl_acked wrote BEFORE-FILE (a pooled connection counts from there)
fl_filling_appliance() {
    local ip n
    ip=$(fl_acked | awk 'NR == FNR { base[$1] = $2; next } $2 - base[$1] > 16777216 { sub(/:[0-9]+$/, "", $1); print $1; exit }' "$1" -)
    for n in 1 2 3; do [[ ${FLEET_IPS[n - 1]} == "$ip" ]] && { echo "$n"; return 0; }; done
    return 1
}
# fl_blob_requests MARK REPO DIGEST: the upstream's requests for the blob since line MARK, one a line:
# "METHOD REMOTE-IP STATUS BYTES-WRITTEN"
fl_blob_requests() {
    tail -n "+$(($1 + 1))" "$(fl_log nvcr)" | grep -F "/v2/$2/blobs/$3" | grep -F 'msg="response completed' |
        sed -E 's/.*http\.request\.method=([A-Z]+).*http\.request\.remoteaddr="?([0-9.]+):[0-9]+.*http\.response\.status=([0-9]+).*http\.response\.written=([0-9]+).*/\1 \2 \3 \4/'
}
# The owner of a cold blob killed mid-fill: the upstream's way to the LAN throttled (tc tbf on APP's
# LAN interface, 400 Mbit/s) so the fill lasts; 2 clients on each appliance; the appliance that fetches
# from the upstream killed with SIGKILL once 16 MiB went through. Its number goes to $FW/killed.
fl_kill_owner_mid_fill() {
    local d=${DIGEST[fleet-kill]} dir=$FW/kill m owner='' i good bad cpid out
    mkdir -p "$dir"
    m=$(fl_mark nvcr)
    fl_acked >"$dir/acked-before"
    app tc qdisc add dev rce2e-lan root tbf rate 400mbit burst 256kb latency 200ms
    trap 'app tc qdisc del dev rce2e-lan root 2>/dev/null || true' EXIT
    fcli bash -c "$FL_PAR_SH" par "$FW/ca.crt" "$dir" "https://$NVCR_HOST/v2/fleet/kill/blobs/$d" "$NVCR_HOST" 2 \
        "${FLEET_IPS[@]}" &
    cpid=$!
    for ((i = 0; i < 300; i++)); do owner=$(fl_filling_appliance "$dir/acked-before") && break; sleep 0.05; done
    [[ -n $owner ]] || { wait "$cpid"; echo "no appliance's upstream connection passed 16 MiB"; return 1; }
    kill -KILL "${FL_PIDS[owner - 1]}"
    echo "$owner" >"$FW/killed"
    echo "appliance $owner fetches the blob from the upstream: killed (SIGKILL) after 16 MiB"
    wait "$cpid" || true
    app tc qdisc del dev rce2e-lan root
    fl_par_report "$dir" "$d" 2 "$owner"
    read -r good bad <"$dir/count"
    fl_settle
    echo "the upstream's requests for the blob (method, from, status, bytes):"
    fl_blob_requests "$m" fleet/kill "$d" | tee "$dir/requests"
    echo "FIGURES: upstream GETs of the blob with the owner killed mid-fill: $(grep -c '^GET ' "$dir/requests")"
    # the others took over from the upstream (a GET from another appliance than the killed owner)
    grep -qE "^GET (${FLEET_IPS[0]}|${FLEET_IPS[1]}|${FLEET_IPS[2]}) " <(grep -vF " ${FLEET_IPS[owner - 1]} " "$dir/requests") ||
        { echo "no GET of the blob from another appliance: nobody took over from the upstream"; return 1; }
    expect_eq "$bad" 0 "clients of the other appliances without the whole blob"
    expect_eq "$good" 4 "clients of the other appliances with the whole blob"
    for ((i = 1; i <= 3; i++)); do
        ((i == owner)) && continue
        out=$(fl_curl "$i" -o "$dir/retry" -w '%{http_code} %header{x-cache}' "https://$NVCR_HOST/v2/fleet/kill/blobs/$d")
        echo "retry through appliance $i: $out"
        expect_eq "${out%% *} $(sha256_of "$dir/retry")" "200 $d" "retry through appliance $i"
    done
}
fl_restarted_from_tier() { # the killed owner, restarted: the blob from the shared tier, no upstream GET
    local n d=${DIGEST[fleet-kill]} m out
    n=$(cat "$FW/killed")
    fl_in_bucket 60 "$d"
    m=$(fl_mark nvcr)
    out=$(fl_curl "$n" -o "$FW/kill/after" -w '%{http_code} %header{x-cache}' "https://$NVCR_HOST/v2/fleet/kill/blobs/$d")
    echo "GET through the restarted appliance $n: $out"
    expect_eq "${out%% *} $(sha256_of "$FW/kill/after")" "200 $d" "answer and body"
    fl_settle
    expect_eq "$(fl_blob_gets nvcr "$m" fleet/kill "$d")" 0 "upstream GETs of the blob"
}

# quay.io's private image pulled with credentials through appliance 1; through 2 and 3 its layer and
# manifest by digest are refused anonymously, with a wrong password, with a forged peer header, and
# under another repository's name; the right credentials get them (from the fleet: no upstream GET)
fl_private_across() {
    local blob m n path out creds
    blob=$(quay_blob)
    fl_skopeo 1 copy --src-creds "$QUAY_USER:$QUAY_PASS" "docker://$QUAY_REF" "oci:$FW/quay1:x" >/dev/null
    fl_in_bucket 30 "$blob"
    # (the manifest, read by tag, is in appliance 1's cache; whether it is in the bucket too:)
    grep -qF "${DIGEST[quay]#sha256:}" "$FW/objects" && echo "the manifest is in the bucket" || echo "the manifest is not in the bucket"
    local leaks=0
    for n in 2 3; do
        for path in "/v2/corp/app/blobs/$blob" "/v2/corp/app/manifests/${DIGEST[quay]}" "/v2/other/repo/blobs/$blob"; do
            for creds in - "$QUAY_WRONG"; do
                out=$(fl_get "$n" "$creds" "$path" -H 'Accept: application/vnd.oci.image.manifest.v1+json')
                echo "appliance $n $path as ${creds%%:*}: $out"
                [[ $out == 2* || $out == *" $blob" || $out == *" ${DIGEST[quay]}" ]] && leaks=$((leaks + 1))
            done
            out=$(fl_get "$n" - "$path" -H "X-Regcache-Peer: ${FLEET_IPS[0]}:443")
            echo "appliance $n $path anonymous with X-Regcache-Peer: $out"
            [[ $out == 2* || $out == *" $blob" || $out == *" ${DIGEST[quay]}" ]] && leaks=$((leaks + 1))
        done
    done
    expect_eq "$leaks" 0 "answers that served the private layer or manifest"
    m=$(fl_mark quay)
    out=$(fl_get 2 "$QUAY_USER:$QUAY_PASS" "/v2/corp/app/blobs/$blob")
    echo "appliance 2 with the credentials: $out"
    expect_eq "${out%% *} ${out##* }" "200 $blob" "the owner's credentials through appliance 2"
    fl_settle
    expect_eq "$(fl_blob_gets quay "$m" corp/app)" 0 "quay.io blob GETs for it"
    # Docker Hub (token auth): cached with credentials via 1, refused anonymously via 2
    fl_skopeo 1 inspect --creds "$SEED_USER:$SEED_PASS" --raw docker://docker.io/e2eprivate/secret:1 >/dev/null
    if fl_skopeo 2 inspect --raw docker://docker.io/e2eprivate/secret:1; then
        echo "anonymous skopeo read docker.io/e2eprivate/secret:1 through appliance 2"; return 1
    fi
}

fl_client_moves_on() { # appliance 1 stopped: the client resolves through the others, skips its address
    local out got
    out=$(fcli curl -sS -v --max-time 30 --cacert "$FW/ca.crt" -o /dev/null -w '%{http_code}' "https://$NVCR_HOST/v2/" 2>&1)
    grep -E '^\* +(Trying|Connected|connect to|Failed)' <<<"$out" || true
    expect_eq "$(tail -n 1 <<<"$out")" 200 "answer to curl"
    grep -qE "^\\* +Trying ${FLEET_IPS[0]//./\\.}:443" <<<"$out" || { echo "curl did not try the stopped appliance first"; return 1; }
    grep -qE "^\\* +Connected to $NVCR_HOST \\(${FLEET_IPS[1]//./\\.}\\)" <<<"$out" || { echo "curl did not move on to appliance 2"; return 1; }
    got=$(isolated "$FCLI_NS" timeout 120 skopeo inspect --format '{{.Digest}}' "docker://$NVCR_HOST/fleet/app:1")
    expect_eq "$got" "${DIGEST[fleet-app]}" "skopeo inspect through the fleet"
}

fl_metrics() { ip netns exec "${FL_NS[$1 - 1]}" curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"; } # N
# fl_store_metrics N: appliance N's shared-store series; prints "UP ERRORS" (store_up, errors summed)
fl_store_metrics() {
    fl_metrics "$1" | awk '/^regcache_tier_store_up\{tier="shared"\}/ { up = $2 }
        /^regcache_tier_errors_total\{tier="shared"/ { e += $2 } END { print up + 0, e + 0 }'
}
fl_store_down_pulls() { # Garage stopped: an image not seen yet, and one seen, pulled through 2 and 3
    fl_copy_ok 2 "$NVCR_HOST/fleet/down:1" fleet-down
    fl_copy_ok 3 "$NVCR_HOST/fleet/app:1" fleet-app
    fl_copy_ok 1 "$NVCR_HOST/fleet/down:1" fleet-down
    local n
    for n in 1 2 3; do
        http_code_in 200 ip netns exec "${FL_NS[n - 1]}" curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/healthz"
    done
    echo "every appliance's /healthz is 200 with the store down"
    # the failure is counted: the store marked down, its errors counted (on appliance 2, which asked it)
    local up errors
    read -r up errors < <(fl_store_metrics 2)
    fl_metrics 2 | grep -E '^regcache_tier_(store_up|errors_total)' || true
    expect_eq "$up" 0 "appliance 2's regcache_tier_store_up{tier=\"shared\"}"
    ((errors > 0)) || { echo "no regcache_tier_errors_total{tier=\"shared\"} counted"; return 1; }
}
fl_sharing_resumes() { # Garage back: a new image through 1 reaches the bucket, then 3 pulls it without the upstream
    local m
    fl_copy_ok 1 "$NVCR_HOST/fleet/after:1" fleet-after
    # shellcheck disable=SC2046
    fl_in_bucket 60 $(fl_blobs_of fleet-after)
    m=$(fl_mark nvcr)
    fl_copy_ok 3 "$NVCR_HOST/fleet/after:1" fleet-after
    fl_settle
    expect_eq "$(fl_blob_gets nvcr "$m" fleet/after)" 0 "upstream blob GETs of fleet/after through appliance 3"
    # the appliances that used the store since see it up again (one marked down and not asked since
    # keeps its mark until its next request)
    local n up errors ups=0
    for n in 1 2 3; do
        read -r up errors < <(fl_store_metrics "$n")
        echo "appliance $n: regcache_tier_store_up{tier=\"shared\"} $up, shared-store errors so far $errors"
        ups=$((ups + up))
    done
    ((ups >= 1)) || { echo "no appliance sees the store up again"; return 1; }
}
fl_catches_up() { # what was filled while the store was down is uploaded once it is back
    # shellcheck disable=SC2046
    fl_in_bucket 60 $(fl_blobs_of fleet-down)
}

fl_teardown() {
    local n
    for n in 1 2 3; do [[ -z ${FL_PIDS[n - 1]} ]] || fl_stop "$n"; done
    garage_stop
    stop_forget "$FL_FWD_PID" "$FL_DOCKERD_PID"
    FL_FWD_PID='' FL_DOCKERD_PID=''
    for n in "$FCLI_NS" "${FL_NS[@]}" "$LAN_NS"; do remove_ns "$n"; done
    # the bulk (caches, Garage's data, the clients' stores: about 4 GB), not the configs and logs
    rm -rf "$FW"/f[123]/state/cache "$FW"/garage/n[123]/data "$FW/docker/data" "$FW/podman" "$FW"/oci-* "$FW"/big "$FW"/kill
}

phase_run() {
    FW=$W/fleet
    mkdir -p "$FW"
    local n
    if ! garage_bin >/dev/null; then
        run_check "fleet: garage installed (/opt/garage/bin/garage; scripts/test.sh's install step builds it)" false
        return
    fi
    local failed=$FAILED
    run_check_here "fleet: 3 namespaces on a LAN, Garage 2.5 with 3 nodes (replication_factor 3), key and bucket, test images" fl_setup
    [[ $FAILED == "$failed" ]] || { skip "the fleet's other checks: its setup failed"; fl_teardown; return; }
    run_check "fleet: one CA in every appliance (certs/ copied with cp -a: ca.key 0600 kept, same fingerprint)" fl_share_ca
    run_check "fleet: a copy of certs/ whose ca.key others may read is refused" fl_key_mode_refused
    failed=$FAILED
    for n in 1 2 3; do run_check_here "fleet: appliance $n starts with [storage] s3 at Garage and [fleet] peers" fl_start "$n"; done
    [[ $FAILED == "$failed" ]] || { skip "the fleet's other checks: an appliance did not start"; fl_teardown; return; }
    setup_client_trust "$FCLI_NS" "$FW/ca.crt"
    run_check_here "fleet: a client dockerd starts in FCLI (its /etc/hosts names appliance 3)" fl_dockerd_start
    run_check "fleet: each appliance serves the shared CA (/ca.crt) and a leaf that chains to it" fl_same_ca_served
    run_check "fleet: dig at each appliance answers $NVCR_HOST with the three addresses (dns.answer_ipv4)" fl_dns_answers
    run_check "fleet: an image pulled through appliance 1 (skopeo), then through 2 (podman) and 3 (dockerd): no upstream blob GET" \
        fl_shared_pull
    run_check "fleet: 4 clients on each of 3 appliances GET a cold $FLEET_BIG_MIB MiB blob at once: 1 upstream GET, every body whole" \
        fl_concurrent_cold
    # (2>/dev/null: the shell's "Killed" notice for the appliance's job)
    run_check "fleet: the owner killed mid-fill: the other appliances' clients complete, a retry through them succeeds" \
        fl_kill_owner_mid_fill 2>/dev/null
    n=$(cat "$FW/killed" 2>/dev/null || true)
    if [[ -n $n ]]; then
        wait "${FL_PIDS[n - 1]}" 2>/dev/null || true
        forget_pid "${FL_PIDS[n - 1]}"
        run_check_here "fleet: the killed appliance $n restarts" fl_start "$n" -restarted
        run_check "fleet: the restarted appliance $n serves the blob from the shared tier (no upstream GET)" fl_restarted_from_tier
    fi
    run_check "fleet: private content cached via appliance 1 is refused through 2 and 3 to clients the upstream refuses" \
        fl_private_across
    fl_stop 1
    run_check "fleet: appliance 1 stopped: a client resolving through the fleet moves on to appliance 2" fl_client_moves_on
    run_check_here "fleet: appliance 1 starts again" fl_start 1 -again
    garage_stop
    run_check "fleet: Garage stopped: pulls through each appliance keep working; the store is counted down (/metrics)" \
        fl_store_down_pulls
    run_check_here "fleet: Garage starts again" garage_start_ready
    run_check "fleet: Garage back: a new image reaches the bucket and is shared (no upstream blob GET)" fl_sharing_resumes
    run_check "fleet: what was filled while Garage was down is uploaded once it is back" fl_catches_up
    fl_teardown
}
