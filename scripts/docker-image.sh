#!/usr/bin/env bash
# Packages a locally built regcache binary into a Docker image without pulling anything: a
# minimal root filesystem (the binary, the shared libraries it links, a passwd entry for uid
# 10001) imported with `docker import`. Same layout and entrypoint as the Dockerfile.
#
#   scripts/docker-image.sh [IMAGE]        # default regcache:local
# Environment: REGCACHE_BIN (default: cargo build --release, target/release/regcache),
# DOCKER_HOST (which dockerd to import into).
set -Eeuo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${1:-regcache:local}
bin=${REGCACHE_BIN:-}
if [[ -z $bin ]]; then
    (cd "$here" && cargo build --release --locked)
    bin=$here/target/release/regcache
fi
[[ -x $bin ]] || { echo "docker-image.sh: $bin is not an executable" >&2; exit 1; }
command -v setcap >/dev/null || { echo "docker-image.sh: setcap missing (apt-get install libcap2-bin)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"     # mktemp -d makes it 0700: the image's / would be closed to uid 10001
mkdir -p "$root"/{usr/local/bin,etc/regcache,var/lib/regcache/certs,var/lib/regcache/cache,tmp}
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/regcache"
strip "$root/usr/local/bin/regcache" 2>/dev/null || true
# The dynamic loader and every library the binary links, at the same paths.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nregcache:x:10001:10001::/var/lib/regcache:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nregcache:x:10001:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chown -R 10001:10001 "$root/var/lib/regcache"
# Ports 53 and 443 as uid 10001: only the capability to bind them, on the binary.
setcap cap_net_bind_service=+ep "$root/usr/local/bin/regcache"

tar --xattrs --xattrs-include='security.capability' --numeric-owner -C "$root" -c . |
    docker import \
        --change 'USER 10001:10001' \
        --change 'WORKDIR /var/lib/regcache' \
        --change 'ENTRYPOINT ["/usr/local/bin/regcache"]' \
        --change 'CMD ["serve"]' \
        --change 'HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/regcache", "healthcheck"]' \
        - "$image" >/dev/null
echo "docker-image.sh: built $image from $bin ($(du -sh "$root" | cut -f1) root filesystem)"
