#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every check (what .ci/run runs).
#
#   sudo scripts/test.sh                      # everything: install, fmt, clippy, tests, fuzz, e2e
#   sudo scripts/test.sh --skip fuzz,e2e      # without the brief fuzzing and the end-to-end run
#   scripts/test.sh --no-install --skip e2e   # as a user, when the packages are already there
#
# Steps, in order (names for --skip): install (Debian packages, rustup components, the nightly
# toolchain and cargo-fuzz, Garage 2.5 for the S3 tests and the e2e, built once with cargo install), fmt, clippy, test
# (`cargo test`: green on its own, no outside tool), tools (the tests that need an outside tool,
# `#[ignore]`d in a plain `cargo test`, run here with `--ignored`: promtool's check of /metrics, the
# status page in headless Chromium, and, through scripts/s3-tests.sh, the shared tier against a one-node
# Garage; they FAIL when the tool is missing), fuzz (scripts/fuzz.sh, every
# target briefly), e2e (scripts/e2e.sh, as root).
# Runs on a fresh Debian 12 machine with the Rust toolchain (rustup); ends with "test.sh: ok".
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

skip=,
install=1
while (($#)); do
    case $1 in
    --skip) skip+=$2,; shift 2 ;;
    --no-install) install=0; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
wanted() { [[ $skip != *",$1,"* ]]; }
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# docker.io: dockerd for the e2e clients and the compose bring-up (docker-compose); containerd: ctr;
# docker-registry: the real upstream registries; dnsmasq-base: the upstream resolver; dnsutils: dig;
# python3: the e2e token and CDN servers; prometheus: promtool for the /metrics tests; libcap2-bin:
# setcap for scripts/docker-image.sh; chromium: renders the status page in its test; tinyproxy: the
# corporate proxy of the e2e phase corporate-proxy.
PACKAGES=(docker.io containerd docker-compose skopeo podman docker-registry dnsmasq-base dnsutils iproute2
    openssl curl ca-certificates jq python3 procps uidmap prometheus libcap2-bin iptables
    chromium fonts-dejavu-core tinyproxy)

install_packages() {
    step "install Debian packages"
    # No package may start its daemon (dockerd, prometheus…): the tests start what they need.
    local policy=/usr/sbin/policy-rc.d ours=0
    [[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null; as_root chmod +x "$policy"; ours=1; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null
    [[ $ours == 0 ]] || as_root rm -f "$policy"
    step "install Rust components"
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
    if wanted fuzz; then
        rustup toolchain list | grep '^nightly' >/dev/null || rustup toolchain install nightly --profile minimal
        command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    fi
    if wanted e2e || wanted tools; then install_garage; fi
}

# Garage 2.5 (a distributed S3-compatible object store in Rust), the shared store of the e2e phase
# fleet. There is no Debian package: it is built once per machine into /opt/garage (a 56 MB binary). On
# these 2-core machines the build takes 13.5 minutes alone, 16 minutes while other builds share the
# cores (measured 2026-11-30: 18:57:37-19:13:40); it is skipped when /opt/garage/bin/garage is there.
GARAGE_VERSION=2.5.0
install_garage() {
    [[ -x /opt/garage/bin/garage ]] && return 0
    step "cargo install garage $GARAGE_VERSION into /opt/garage (once per machine; about 14 minutes on 2 cores)"
    as_root mkdir -p /opt/garage
    [[ $(id -u) == 0 ]] || as_root chown "$(id -u):$(id -g)" /opt/garage
    cargo install garage --locked --version "$GARAGE_VERSION" --root /opt/garage
}

[[ $install == 0 ]] || ! wanted install || install_packages

if wanted fmt; then step "cargo fmt --check"; cargo fmt --all -- --check; fi
if wanted clippy; then step "cargo clippy"; cargo clippy --all-targets -- -D warnings; fi
if wanted test; then step "cargo test"; cargo test; fi
if wanted tools; then
    step "the tests that need promtool and chromium (cargo test -- --ignored)"
    for tool in promtool chromium; do
        command -v "$tool" >/dev/null || echo "test.sh: $tool missing: its test will fail (install step skipped?)" >&2
    done
    cargo test --test integration -- --ignored --skip shared_tier_s3
    step "the shared tier's tests against a real S3 server: a one-node Garage (scripts/s3-tests.sh)"
    as_root bash scripts/s3-tests.sh
fi
if wanted fuzz; then step "scripts/fuzz.sh, every target briefly"; bash scripts/fuzz.sh; fi
if wanted e2e; then step "scripts/e2e.sh"; as_root bash scripts/e2e.sh; fi
step "done"
echo "test.sh: ok"
