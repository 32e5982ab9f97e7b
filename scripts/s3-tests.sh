#!/usr/bin/env bash
# The shared tier's tests against a real S3-compatible server (tests/integration/shared_tier_s3.rs,
# `#[ignore]`d in a plain `cargo test` because they need one): a one-node Garage 2.5 (scripts/lib/garage.sh)
# in a network namespace of its own (rcs3test, loopback only), then those tests inside it with
# REGCACHE_TEST_S3_* naming its bucket. scripts/test.sh's tools step runs it; as root. Exit status: the
# tests'; a Garage that does not start fails the run.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB=$HERE/lib LIB_TAG=s3-tests
# shellcheck source=lib/proc.sh
. "$LIB/proc.sh"
# shellcheck source=lib/garage.sh
. "$LIB/garage.sh"
cd "$HERE/.."
NS=rcs3test
W=$(mktemp -d /tmp/rcs3.XXXXXX) LOGS=$W/logs
mkdir -p "$LOGS"
cleanup() { garage_stop || true; ip netns del "$NS" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
GARAGE_NODES=1
garage_up "$NS" 127.0.0.1 "$W/garage" regcache-test || { tail -n 30 "$LOGS"/*.log >&2; exit 1; }
ip netns exec "$NS" env REGCACHE_TEST_S3_ENDPOINT="$GARAGE_ENDPOINT" REGCACHE_TEST_S3_BUCKET=regcache-test \
    REGCACHE_TEST_S3_REGION="$GARAGE_REGION" REGCACHE_TEST_S3_KEY_ID="$GARAGE_KEY_ID" \
    REGCACHE_TEST_S3_SECRET_FILE="$W/garage/secret_access_key" \
    cargo test --test integration shared_tier_s3 -- --ignored
