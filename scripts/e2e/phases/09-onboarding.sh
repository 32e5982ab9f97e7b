# shellcheck shell=bash
# Phase onboarding: scripts/client-setup.sh in the client namespace, against the admin listener: it
# refuses without the CA fingerprint; --dry-run changes nothing; --root DIR writes every file.
PHASE_NEEDS=(appliance)

# The fingerprint comes from the appliance itself (its CLI and start log), not from the HTTP download.
onboard_fp() { app "$BIN" ca cert --fingerprint --config "$RC/config.toml"; }
onboard_dry_run() {
    local out want fp regs h changed rc=0
    touch "$W/onboard.marker"
    cli bash "$REPO/scripts/client-setup.sh" --dry-run --port "$ADMIN_PORT" "$APP_IP" || rc=$?
    expect_eq "$rc" 64 "exit code without --fingerprint (refused)"
    out=$(cli bash "$REPO/scripts/client-setup.sh" --fingerprint "$(onboard_fp)" --dry-run --port "$ADMIN_PORT" "$APP_IP")
    echo "$out"
    want=$(openssl x509 -in "$W/regcache-ca.crt" -noout -fingerprint -sha256 | sed 's/^.*=//')
    expect_eq "$(sed -n 's/.*CA fingerprint (SHA-256): *//p' "$LOGS/regcache.log" | head -n 1)" "$want" "CA fingerprint in regcache's start log"
    fp=$(sed -n 's/^CA fingerprint: *//p' <<<"$out")
    expect_eq "$fp" "$want" "CA fingerprint printed (openssl x509 -fingerprint -sha256 of regcache's CA)"
    regs=$(sed -n 's/^registries: *//p' <<<"$out")
    for h in "${INTERCEPTED[@]}"; do [[ " $regs " == *" $h "* ]] || { echo "$h not among the registries listed"; return 1; }; done
    grep -qx 'dry run: nothing was changed' <<<"$out" || { echo "no 'dry run: nothing was changed'"; return 1; }
    grep -qx "+ write /etc/docker/certs.d/$HUB_HOST/ca.crt" <<<"$out" || { echo "no planned write of docker's certs.d/$HUB_HOST/ca.crt"; return 1; }
    changed=$(find "/etc/netns/$CLI_NS" /etc/docker /etc/containers /etc/resolv.conf /usr/local/share/ca-certificates \
        -newer "$W/onboard.marker" 2>/dev/null | head -n 5 || true)
    [[ -z $changed ]] || { echo "changed by the dry run: $changed"; return 1; }
}
onboard_root() {
    local r=$W/onboard h f
    mkdir -p "$r/etc/containerd" "$r/usr/local/share/ca-certificates"
    echo "nameserver 192.0.2.53" >"$r/etc/resolv.conf"
    cli bash "$REPO/scripts/client-setup.sh" --fingerprint "$(onboard_fp)" --port "$ADMIN_PORT" --root "$r" "$APP_IP"
    echo "--- files under the root:"; (cd "$r" && find . -type f | sort | sed -n '1,60p')
    for h in "${INTERCEPTED[@]}"; do
        for f in "etc/docker/certs.d/$h/ca.crt" "etc/containers/certs.d/$h/ca.crt" "etc/containerd/certs.d/$h/regcache-ca.crt"; do
            cmp "$W/regcache-ca.crt" "$r/$f" || { echo "$f is not regcache's CA"; return 1; }
        done
    done
    grep -qx "server = \"https://$HUB_HOST\"" "$r/etc/containerd/certs.d/docker.io/hosts.toml" \
        || { echo "containerd's hosts.toml for docker.io does not name $HUB_HOST"; return 1; }
    cmp "$W/regcache-ca.crt" "$r/usr/local/share/ca-certificates/regcache.crt"
    echo "--- etc/resolv.conf:"; cat "$r/etc/resolv.conf"
    expect_eq "$(grep '^nameserver' "$r/etc/resolv.conf" | paste -sd' ')" "nameserver $APP_IP" "nameservers in resolv.conf"
    expect_eq "$(cat "$r/etc/resolv.conf.before-regcache")" "nameserver 192.0.2.53" "resolv.conf.before-regcache"
}

phase_run() {
    run_check "onboarding: client-setup.sh refuses without --fingerprint; with the fingerprint from regcache ca cert --fingerprint, --dry-run --port $ADMIN_PORT $APP_IP (in CLI) prints it and the intercepted registries, changes nothing" \
        onboard_dry_run
    run_check "onboarding: client-setup.sh --fingerprint FP --root DIR writes certs.d ca.crt for docker and containers (registry-1.docker.io, docker.io, ...), containerd hosts.toml, the system-store CA and resolv.conf -> $APP_IP" \
        onboard_root
}
