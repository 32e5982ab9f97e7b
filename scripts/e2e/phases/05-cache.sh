# shellcheck shell=bash
# Phase cache: 8 concurrent cold GETs of one 96 MiB blob reach the upstream once (counted in its own
# request log); a Basic-auth upstream's (quay.io's) cached content only for clients it accepts.
PHASE_NEEDS=(appliance)

# GETs of nvidia/big's blob DIGEST in the nvcr.io upstream's own request log (distribution logs one
# "response completed" line per request at level info, fields sorted: method before uri)
nvcr_blob_gets() {
    grep -cE "msg=\"response completed[^\"]*\" .*http\\.request\\.method=GET .*http\\.request\\.uri=\"?/v2/nvidia/big/blobs/$1\"?( |\$)" \
        "$LOGS/upstream-nvcr.log" || true
}
coalesced_fill() {
    local url="https://$NVCR_HOST/v2/nvidia/big/blobs/$BIG_DIGEST" dir=$W/coalesce i code xc sum bad=0 misses=0 n
    mkdir -p "$dir"
    expect_eq "$(nvcr_blob_gets "$BIG_DIGEST")" 0 "upstream GETs of the $BIG_MIB MiB blob before the test"
    # one shell in CLI starts all 8, so they arrive within milliseconds; bodies are hashed on the fly
    cli bash -c 'for i in 1 2 3 4 5 6 7 8; do
            { curl -sS --max-time 120 --cacert "$1" -D "$2/headers.$i" -o - "$3" | sha256sum >"$2/sum.$i"; } 2>"$2/err.$i" &
        done
        wait' coalesce "$W/regcache-ca.crt" "$dir" "$url"
    for i in 1 2 3 4 5 6 7 8; do
        code=$(awk 'NR == 1 {print $2}' "$dir/headers.$i")
        xc=$(awk 'tolower($1) == "x-cache:" {print $2}' "$dir/headers.$i" | tr -d '\r')
        sum=sha256:$(cut -d' ' -f1 "$dir/sum.$i")
        echo "GET $i: HTTP $code x-cache ${xc:-none} body $sum $(cat "$dir/err.$i")"
        [[ $code == 200 && $sum == "$BIG_DIGEST" ]] || bad=$((bad + 1))
        [[ $xc == MISS ]] && misses=$((misses + 1))
    done
    # the upstream logs a request once its response is complete
    for ((i = 0; i < 30; i++)); do [[ $(nvcr_blob_gets "$BIG_DIGEST") -ge 1 ]] && break; sleep 0.1; done
    sleep 0.3
    echo "upstream log lines for the blob:"
    grep -F "/v2/nvidia/big/blobs/$BIG_DIGEST" "$LOGS/upstream-nvcr.log" | grep -oE 'http\.request\.method=[A-Z]+|http\.response\.status=[0-9]+|http\.response\.written=[0-9]+' | paste -sd' ' || true
    expect_eq "$bad" 0 "responses that are not 200 with a body hashing to the digest"
    expect_eq "$misses" 1 "responses with x-cache: MISS"
    expect_eq "$(nvcr_blob_gets "$BIG_DIGEST")" 1 "GETs of the blob served by the upstream (its own log)"
    # and once more, now that it is stored
    n=$(cli_curl -o /dev/null -w '%{http_code} %header{x-cache}' "$url")
    expect_eq "$n" "200 HIT" "a 9th GET after the fill"
    expect_eq "$(nvcr_blob_gets "$BIG_DIGEST")" 1 "upstream GETs of the blob after the 9th GET"
}

phase_run() {
    run_check "cache: 8 concurrent cold GETs of a $BIG_MIB MiB blob: all bodies match the digest, the upstream served it once" coalesced_fill
    run_check "basic auth: skopeo --creds copies $QUAY_REF through the appliance (digest as pushed)" basic_pull_with_credentials
    run_check "basic auth: without credentials skopeo inspect fails (unauthorized); cached layer and manifest GETs get 401" \
        basic_refused - 401 unauthorized
    run_check "basic auth: with a wrong password skopeo inspect fails (unauthorized); cached layer and manifest GETs get 401" \
        basic_refused "$QUAY_WRONG" 401 unauthorized
    run_check "basic auth: the right credentials get the layer and the manifest from the cache (x-cache HIT)" basic_cached_for_owner
}
