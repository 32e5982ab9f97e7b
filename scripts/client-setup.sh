#!/usr/bin/env bash
# Onboards a client machine onto a regcache appliance: fetches the appliance's CA over HTTP, checks
# it against the fingerprint you got from the appliance, installs it for every intercepted registry
# name (dockerd, containerd, podman/skopeo/buildah, the system trust store) and points the resolver
# at the appliance.
#
#   scripts/client-setup.sh --fingerprint FP [--dry-run] [--port 9090] [--no-dns] [--root DIR] APPLIANCE
#   scripts/client-setup.sh --insecure-trust-on-first-use [...] APPLIANCE
#
# FP is the CA's SHA-256 fingerprint, from the appliance (a channel you trust, not this download):
#   regcache ca cert --fingerprint          (or the "CA fingerprint (SHA-256): ..." line at start)
# with or without colons, any case. A CA whose fingerprint differs is refused. Without FP, only
# --insecure-trust-on-first-use installs whatever the network hands out (and says which one).
# The CA must be exactly one PEM certificate, a CA (basicConstraints CA:TRUE) with name constraints.
# Every name in the appliance's /registries must be a plain RFC 1123 host name (no port: regcache
# intercepts names on 443 and never lists one), or nothing is written.
# APPLIANCE's admin listener must be reachable from this client: set admin.listen to a LAN address
# (access.allow still applies). --dry-run checks and prints what would be done, changing nothing;
# --root writes under DIR (tests).
set -Eeuo pipefail
export LC_ALL=C

me=client-setup.sh
usage="usage: $me (--fingerprint FP | --insecure-trust-on-first-use) [--dry-run] [--port N] [--no-dns] [--root DIR] APPLIANCE"
dry=0 port=9090 dns=1 root='' want='' tofu=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) dry=1 ;;
        --port) port=$2; shift ;;
        --no-dns) dns=0 ;;
        --root) root=${2%/}; shift ;;
        --fingerprint) want=$2; shift ;;
        --insecure-trust-on-first-use) tofu=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "$me: unknown option $1" >&2; exit 64 ;;
        *) break ;;
    esac
    shift
done
[[ $# -eq 1 ]] || { echo "$usage" >&2; exit 64; }
appliance=$1

# "AB:CD:…", "abcd…" or openssl's "sha256 Fingerprint=AB:CD:…" → 64 upper-case hex digits.
normalize_fp() { local fp=${1##*=}; fp=${fp//:/}; fp=${fp//[[:space:]]/}; printf '%s' "${fp^^}"; }
if [[ -n $want && $tofu == 1 ]]; then
    echo "$me: give --fingerprint or --insecure-trust-on-first-use, not both" >&2; exit 64
elif [[ -n $want ]]; then
    want=$(normalize_fp "$want")
    [[ $want =~ ^[0-9A-F]{64}$ ]] || { echo "$me: --fingerprint: not a SHA-256 fingerprint (64 hex digits, colons optional)" >&2; exit 64; }
elif [[ $tofu == 0 ]]; then
    cat >&2 <<EOF
$me: refusing to install a CA fetched over plain HTTP without its fingerprint: anyone on the
network path could hand out their own CA. Get the fingerprint on the appliance, with
    regcache ca cert --fingerprint
or from its start log (the line "CA fingerprint (SHA-256): ..."), and pass it:
    $me --fingerprint AB:CD:... $appliance
To trust whatever CA the appliance's address serves now (not recommended), pass
--insecure-trust-on-first-use instead.
EOF
    exit 64
fi

base="http://$appliance:$port"
[[ $appliance == *:* && $appliance != \[* ]] && base="http://[$appliance]:$port"

run() { # prints the command; runs it unless --dry-run
    printf '+ %s\n' "$*"
    [[ $dry == 1 ]] || "$@"
}
put() { # FILE MODE (content on stdin)
    local file=$root$1 mode=$2 content
    content=$(cat)
    printf '+ write %s\n' "$file"
    [[ $dry == 1 ]] && return
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$content" >"$file"
    chmod "$mode" "$file"
}
refuse() { echo "$me: $*; nothing was installed" >&2; exit 1; }

# A host name as RFC 1123 (lower case): labels of 1-63 [a-z0-9-] not starting or ending with '-',
# at most 253 characters. No port, no '/', no '..', nothing else: the name becomes a path below.
valid_host() {
    local label='[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?'
    [[ ${#1} -le 253 && $1 =~ ^$label(\.$label)*$ ]]
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() { curl -fsS --max-time 10 --max-filesize 1048576 -o "$work/$1" "$base/$1" || refuse "cannot fetch $base/$1"; }
fetch ca.crt
fetch registries

# Exactly one PEM block, a certificate; installed as openssl re-encodes it (nothing else rides along).
blocks=$(grep -c -- '-----BEGIN ' "$work/ca.crt" || true)
[[ $blocks == 1 ]] && grep -q -- '-----BEGIN CERTIFICATE-----' "$work/ca.crt" \
    || refuse "$base/ca.crt must hold exactly one PEM certificate (it has $blocks PEM blocks)"
openssl x509 -in "$work/ca.crt" -out "$work/ca.pem" 2>/dev/null || refuse "$base/ca.crt is not a certificate"
got=$(normalize_fp "$(openssl x509 -in "$work/ca.pem" -noout -fingerprint -sha256)")
pretty=$(sed 's/../&:/g; s/:$//' <<<"$got")
if [[ $tofu == 1 ]]; then
    cat >&2 <<EOF
WARNING: --insecure-trust-on-first-use: trusting the CA that $base handed out over plain HTTP,
WARNING: unchecked. Anyone on the network path could have replaced it. Trusted fingerprint:
WARNING:   $pretty
WARNING: compare it now with \`regcache ca cert --fingerprint\` on the appliance.
EOF
elif [[ $got != "$want" ]]; then
    refuse "the CA from $base has SHA-256 fingerprint $pretty, not the $(sed 's/../&:/g; s/:$//' <<<"$want") you gave: someone may be intercepting, or the appliance's CA changed"
fi
bc=$(openssl x509 -in "$work/ca.pem" -noout -ext basicConstraints 2>/dev/null || true)
grep -q 'CA:TRUE' <<<"$bc" || refuse "$base/ca.crt is not a CA certificate (no basicConstraints CA:TRUE)"
nc=$(openssl x509 -in "$work/ca.pem" -noout -ext nameConstraints 2>/dev/null || true)
permitted=$(awk '/Permitted:/ { p = 1; next } /Excluded:/ { p = 0 } p' <<<"$nc" | grep -o 'DNS:[^ ,]*' | sed 's/^DNS://' | paste -sd' ' || true)
[[ -n $permitted ]] || refuse "$base/ca.crt carries no permitted DNS name constraints: trusting it would trust it for every site"

mapfile -t hosts <"$work/registries"
[[ ${#hosts[@]} -gt 0 ]] || refuse "$base/registries lists no registry"
for h in "${hosts[@]}"; do
    valid_host "$h" || refuse "$base/registries: '$h' is not a valid host name (RFC 1123: labels of a-z, 0-9 and '-', no port, '/' or '..')"
done

echo "CA subject:     $(openssl x509 -in "$work/ca.pem" -noout -subject | sed 's/^subject=//')"
echo "CA fingerprint: $pretty"
echo "CA permits:     $permitted"
echo "registries:     ${hosts[*]}"

for h in "${hosts[@]}"; do
    put "/etc/docker/certs.d/$h/ca.crt" 0644 <"$work/ca.pem"
    put "/etc/containers/certs.d/$h/ca.crt" 0644 <"$work/ca.pem"
    if [[ -d $root/etc/containerd ]]; then
        server=$h; [[ $h == docker.io ]] && server=registry-1.docker.io
        put "/etc/containerd/certs.d/$h/regcache-ca.crt" 0644 <"$work/ca.pem"
        printf 'server = "https://%s"\n\n[host."https://%s"]\n  capabilities = ["pull", "resolve", "push"]\n  ca = "/etc/containerd/certs.d/%s/regcache-ca.crt"' \
            "$server" "$server" "$h" | put "/etc/containerd/certs.d/$h/hosts.toml" 0644
    fi
done

# The system trust store: dockerd uses only it for Docker Hub names (docker.io/…, short names).
if [[ -d $root/usr/local/share/ca-certificates || -z $root && -x /usr/sbin/update-ca-certificates ]]; then
    put /usr/local/share/ca-certificates/regcache.crt 0644 <"$work/ca.pem"
    [[ -n $root ]] || run update-ca-certificates
elif [[ -d $root/etc/pki/ca-trust/source/anchors ]]; then
    put /etc/pki/ca-trust/source/anchors/regcache.crt 0644 <"$work/ca.pem"
    [[ -n $root ]] || run update-ca-trust
fi

if [[ $dns == 1 ]]; then
    if [[ -z $root ]] && command -v resolvectl >/dev/null && systemctl is-active --quiet systemd-resolved 2>/dev/null; then
        printf '[Resolve]\nDNS=%s\nDomains=~.\n' "$appliance" | put /etc/systemd/resolved.conf.d/regcache.conf 0644
        run systemctl restart systemd-resolved
    else
        if [[ -f $root/etc/resolv.conf && ! -e $root/etc/resolv.conf.before-regcache ]]; then
            run cp -a "$root/etc/resolv.conf" "$root/etc/resolv.conf.before-regcache"
        fi
        printf '# Written by regcache client-setup.sh; the old file is resolv.conf.before-regcache\nnameserver %s\n' \
            "$appliance" | put /etc/resolv.conf 0644
    fi
fi
echo "restart dockerd and containerd (systemctl restart docker containerd) so they read the new CA"
[[ $dry == 1 ]] && echo "dry run: nothing was changed"
exit 0
