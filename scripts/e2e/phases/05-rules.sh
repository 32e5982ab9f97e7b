# shellcheck shell=bash
# Phase rules: freshness per reference ([[cache.rule]] in regcache.toml.in, which covers only
# nvcr.io/e2e-rules/*, seeded here, so that no other phase sees a rule). skopeo reads three tags of one
# repository through the appliance: `latest` under a "0s" rule is revalidated with a HEAD upstream at
# every read (counted in the nvcr.io upstream's own request log), `v1` under "forever" is served from
# the cache past the 2 s of cache.manifest_ttl, `c1` under a 2 s rule (the default's TTL) is
# revalidated then; /api/status counts each rule's answers. (The upstream sees a HEAD of v1 too: that is
# the access check, as cache.auth_ttl is 2 s here; the rule's row says it was served from the cache.)
PHASE_NEEDS=(appliance)

RULES_REPO=e2e-rules/app

# requests with METHOD of the tag TAG's manifest in the nvcr.io upstream's own log (see phase cache)
rules_upstream() { # METHOD TAG
    grep -cE "msg=\"response completed[^\"]*\" .*http\\.request\\.method=$1 .*http\\.request\\.uri=\"?/v2/$RULES_REPO/manifests/$2\"?( |\$)" \
        "$LOGS/upstream-nvcr.log" || true
}
rules_seed() {
    local tag
    for tag in latest v1 c1; do
        seed "rules-$tag" "$NVCR_HOST" "$RULES_REPO" "$tag" --format docker --layer-mib 1
        [[ -n $(rules_digest "$tag") ]]
    done
}
rules_digest() { awk -v k="rules-$1" '$1 == k {print $2}' "$W/state/digests"; } # TAG: as pushed
# skopeo inspect --raw of TAG through the appliance: the manifest as pushed
rules_read() { # TAG
    local got
    got=sha256:$(cli_skopeo inspect --raw "docker://$NVCR_HOST/$RULES_REPO:$1" | sha256sum | cut -d' ' -f1)
    expect_eq "$got" "$(rules_digest "$1")" "digest of the manifest of $RULES_REPO:$1"
}
# waits (bounded) until the upstream logged N requests with METHOD of TAG's manifest
rules_wait_upstream() { # METHOD TAG N
    local i
    for ((i = 0; i < 30; i++)); do [[ $(rules_upstream "$1" "$2") -ge $3 ]] && break; sleep 0.1; done
    sleep 0.3
}
# a field of the rule NAME's row in /api/status
rules_row() { # NAME FIELD
    app curl -sSf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/api/status" \
        | jq -r --arg n "$1" --arg f "$2" '.tag_rules[] | select(.rule == $n) | .[$f] | tostring'
}

rules_always() {
    local n
    for n in 1 2 3; do rules_read latest; done
    rules_wait_upstream HEAD latest 2
    expect_eq "$(rules_upstream GET latest)" 1 "upstream GETs of $RULES_REPO:latest (the first read)"
    expect_eq "$(rules_upstream HEAD latest)" 2 "upstream HEADs of $RULES_REPO:latest (one per later read)"
    expect_eq "$(rules_row e2e-always manifest_ttl)" 0s "e2e-always's TTL on the status page"
    expect_eq "$(rules_row e2e-always upstream) $(rules_row e2e-always revalidated)" "1 2" \
        "e2e-always: tag reads sent upstream, revalidated"
}
rules_forever() {
    rules_read v1
    rules_read c1
    sleep 3 # past the 2 s of cache.manifest_ttl and of the e2e-2s rule
    rules_read v1
    rules_read c1
    rules_wait_upstream HEAD c1 1
    echo "upstream requests of the tags' manifests:"
    grep -E "/v2/$RULES_REPO/manifests/(v1|c1)" "$LOGS/upstream-nvcr.log" | grep -oE 'http\.request\.method=[A-Z]+ |http\.request\.uri=[^ ]+' | paste -sd' ' || true
    expect_eq "$(rules_upstream GET v1) $(rules_upstream GET c1)" "1 1" "upstream GETs of v1 and c1 (the first reads)"
    expect_eq "$(rules_upstream HEAD c1)" 1 "upstream HEADs of c1 (its revalidation)"
    echo "(a HEAD of v1 is the access check of cache.auth_ttl = 2 s, not a revalidation: see the rows)"
    expect_eq "$(rules_row e2e-immutable manifest_ttl)" forever "e2e-immutable's TTL on the status page"
    expect_eq "$(rules_row e2e-immutable hits) $(rules_row e2e-immutable revalidated)" "1 0" \
        "e2e-immutable: the second read of v1 from the cache, not revalidated"
    expect_eq "$(rules_row e2e-2s revalidated)" 1 "e2e-2s: the second read of c1 revalidated"
    expect_eq "$(rules_row e2e-immutable last_tag)" "$NVCR_HOST/$RULES_REPO:v1" "e2e-immutable's last tag"
}

phase_run() {
    run_check "rules: seed $NVCR_HOST/$RULES_REPO with tags latest, v1, c1 (upstream only)" rules_seed
    run_check "rules: a \"0s\" rule: skopeo reads $RULES_REPO:latest 3 times, the upstream sees 1 GET and 2 HEADs of the tag" rules_always
    run_check "rules: a \"forever\" rule serves v1 from the cache after 3 s; c1 under a 2 s rule is revalidated (status page rows)" rules_forever
}
