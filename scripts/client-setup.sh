#!/usr/bin/env bash
# Onboards a client machine onto a regcache appliance: fetches the appliance's CA over HTTP, shows
# its SHA-256 fingerprint, installs it for every intercepted registry name (dockerd, containerd,
# podman/skopeo/buildah, the system trust store) and points the resolver at the appliance.
#
#   scripts/client-setup.sh [--dry-run] [--port 9090] [--no-dns] [--root DIR] APPLIANCE
#
# APPLIANCE is the appliance's address. Its admin listener must be reachable from this client:
# set admin.listen to a LAN address (access.allow still applies). Compare the fingerprint printed
# here with the one on the appliance:
#   regcache ca cert | openssl x509 -noout -fingerprint -sha256
# --dry-run prints what would be done and changes nothing; --root writes under DIR (tests).
set -Eeuo pipefail

dry=0 port=9090 dns=1 root=''
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) dry=1 ;;
        --port) port=$2; shift ;;
        --no-dns) dns=0 ;;
        --root) root=${2%/}; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "client-setup.sh: unknown option $1" >&2; exit 64 ;;
        *) break ;;
    esac
    shift
done
[[ $# -eq 1 ]] || { echo "usage: client-setup.sh [--dry-run] [--port N] [--no-dns] [--root DIR] APPLIANCE" >&2; exit 64; }
appliance=$1
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsS --max-time 10 -o "$work/ca.crt" "$base/ca.crt" || { echo "client-setup.sh: cannot fetch $base/ca.crt" >&2; exit 1; }
curl -fsS --max-time 10 -o "$work/registries" "$base/registries" || { echo "client-setup.sh: cannot fetch $base/registries" >&2; exit 1; }
openssl x509 -in "$work/ca.crt" -noout >/dev/null 2>&1 || { echo "client-setup.sh: $base/ca.crt is not a certificate" >&2; exit 1; }
echo "CA subject:     $(openssl x509 -in "$work/ca.crt" -noout -subject | sed 's/^subject=//')"
echo "CA fingerprint: $(openssl x509 -in "$work/ca.crt" -noout -fingerprint -sha256 | sed 's/^.*=//')"
echo "  compare with: regcache ca cert | openssl x509 -noout -fingerprint -sha256   (on the appliance)"
mapfile -t hosts <"$work/registries"
echo "registries:     ${hosts[*]}"

for h in "${hosts[@]}"; do
    [[ $h =~ ^[a-z0-9.-]+$ ]] || { echo "client-setup.sh: odd registry name '$h'" >&2; exit 1; }
    put "/etc/docker/certs.d/$h/ca.crt" 0644 <"$work/ca.crt"
    put "/etc/containers/certs.d/$h/ca.crt" 0644 <"$work/ca.crt"
    if [[ -d $root/etc/containerd ]]; then
        server=$h; [[ $h == docker.io ]] && server=registry-1.docker.io
        put "/etc/containerd/certs.d/$h/regcache-ca.crt" 0644 <"$work/ca.crt"
        printf 'server = "https://%s"\n\n[host."https://%s"]\n  capabilities = ["pull", "resolve", "push"]\n  ca = "/etc/containerd/certs.d/%s/regcache-ca.crt"' \
            "$server" "$server" "$h" | put "/etc/containerd/certs.d/$h/hosts.toml" 0644
    fi
done

# The system trust store: dockerd uses only it for Docker Hub names (docker.io/…, short names).
if [[ -d $root/usr/local/share/ca-certificates || -z $root && -x /usr/sbin/update-ca-certificates ]]; then
    put /usr/local/share/ca-certificates/regcache.crt 0644 <"$work/ca.crt"
    [[ -n $root ]] || run update-ca-certificates
elif [[ -d $root/etc/pki/ca-trust/source/anchors ]]; then
    put /etc/pki/ca-trust/source/anchors/regcache.crt 0644 <"$work/ca.crt"
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
