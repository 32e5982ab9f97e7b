# shellcheck shell=bash
# Phase rules: freshness per reference ([[cache.rule]] in regcache.toml.in, which covers only
# nvcr.io/e2e-rules/*, seeded here, so that no other phase sees a rule). skopeo reads three tags of one
# repository through the appliance: `latest` under a "0s" rule is revalidated with a HEAD upstream at
# every read (counted in the nvcr.io upstream's own request log), `v1` under "forever" is served from
# the cache past the 2 s of cache.manifest_ttl, `c1` under a 2 s rule (the default's TTL) is
# revalidated then; /api/status counts each rule's answers. (The upstream sees a HEAD of v1 too: that is
# the access check, as cache.auth_ttl is 2 s here; the rule's row says it was served from the cache.)
# Then dockerd pulls `latest` twice and `v1` twice, 3 s apart (its Accept differs from skopeo's, so its
# first pull of a tag maps it with a HEAD upstream): the second pull of `latest` is revalidated with a
# HEAD, no GET; the second of `v1` is served from the cache, not revalidated (the rules' rows).
PHASE_NEEDS=(appliance client-dockerd)

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

# dockerd pulls TAG; the image's digest is the one pushed
rules_docker_pull() { # TAG
    local ref=$NVCR_HOST/$RULES_REPO:$1 digests
    docker rmi -f "$ref" >/dev/null 2>&1 || true
    timeout 180 docker pull "$ref"
    digests=$(docker image inspect --format '{{join .RepoDigests " "}}' "$ref")
    echo "RepoDigests: $digests"
    [[ " $digests " == *"@$(rules_digest "$1") "* ]] || { echo "pushed digest $(rules_digest "$1") not in RepoDigests"; return 1; }
    docker rmi -f "$ref" >/dev/null
}
# rule NAME's row as "upstream revalidated hits"
rules_counts() { echo "$(rules_row "$1" upstream) $(rules_row "$1" revalidated) $(rules_row "$1" hits)"; }
rules_dockerd() { # dockerd's Accept is not skopeo's: its first request of a tag is a mapping of its own
    local heads gets u r h
    heads=$(rules_upstream HEAD latest) gets=$(rules_upstream GET latest)
    read -r u r h <<<"$(rules_counts e2e-always)"
    rules_docker_pull latest
    rules_docker_pull latest
    rules_wait_upstream HEAD latest "$((heads + 2))"
    expect_eq "$(rules_upstream HEAD latest)" "$((heads + 2))" "upstream HEADs of $RULES_REPO:latest (dockerd's two pulls)"
    expect_eq "$(rules_upstream GET latest)" "$gets" "upstream GETs of $RULES_REPO:latest"
    expect_eq "$(rules_counts e2e-always)" "$((u + 1)) $((r + 1)) $h" \
        "e2e-always (upstream revalidated hits): dockerd's first pull maps, its second is revalidated"
    read -r u r h <<<"$(rules_counts e2e-immutable)"
    rules_docker_pull v1
    sleep 3 # past the 2 s of cache.manifest_ttl
    rules_docker_pull v1
    expect_eq "$(rules_upstream GET v1)" 1 "upstream GETs of $RULES_REPO:v1 (skopeo's first read only)"
    expect_eq "$(rules_counts e2e-immutable)" "$((u + 1)) $r $((h + 1))" \
        "e2e-immutable (upstream revalidated hits): dockerd's first pull maps, its second is served from the cache"
}

phase_run() {
    run_check "rules: seed $NVCR_HOST/$RULES_REPO with tags latest, v1, c1 (upstream only)" rules_seed
    run_check "rules: a \"0s\" rule: skopeo reads $RULES_REPO:latest 3 times, the upstream sees 1 GET and 2 HEADs of the tag" rules_always
    run_check "rules: a \"forever\" rule serves v1 from the cache after 3 s; c1 under a 2 s rule is revalidated (status page rows)" rules_forever
    if [[ $DOCKER_OK == 1 ]]; then
        run_check "rules: dockerd pulls latest twice (\"0s\": the second revalidated with a HEAD upstream, no GET) and v1 twice 3 s apart (\"forever\": the second from the cache)" rules_dockerd
    else
        run_check "rules: dockerd starts in the client namespace (logs/dockerd.log)" false
    fi
}
