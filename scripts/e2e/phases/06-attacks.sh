# shellcheck shell=bash
# Phase attacks (issue 9, "Attacks, end to end"): registries that redirect without checking, against the
# appliance with quay.io's private content cached. Each check FAILS on code that trusts a redirect as a
# grant, and passes once grants need a 2xx of the same digest at the end of the redirect chain:
#   registry.k8s.io      every /v2/<anything> is a 307 to its store, which answers 404 (holds nothing)
#   registry.corp.example   every request is a 302 to its login host, which answers 200 text/html
#   - quay.io's private layer and manifest (Basic auth, cached by an authorised read) requested by digest
#     anonymously through both, over HTTPS and over the plain-HTTP mirror (?ns=), HEAD and GET: never
#     served;
#   - an anonymous GET of a tag through the login-page registry is neither stored nor mapped, and does
#     not make the repository public (with that upstream gone, the tag is not served);
#   - a blob GET with Cookie and Authorization whose upstream (Docker Hub) redirects to the CDN: the CDN
#     gets neither header;
#   registry.liar.example   its HEAD of any tag names quay.io's private manifest digest
#   - a HEAD then a GET of a tag through it, anonymously: the GET never serves quay.io's manifest.
PHASE_NEEDS=(appliance)

redirector() { # LOGNAME IP HOST REDIRECTOR-ARGS...: scripts/e2e/redirector.py on IP:443 with HOST's certificate
    local name=$1 ip=$2 host=$3; shift 3
    bg "$name" "$APP_NS" "$PY" "$ASSETS/redirector.py" --listen "$ip:443" --tls-cert "$PKI/$host.crt" \
        --tls-key "$PKI/$host.key" "$@"
}
start_trust_upstreams() {
    redirector upstream-k8s "$K8S_IP" "$K8S_HOST" --mode redirect --status 307 --to "https://$K8S_STORE"
    K8S_PID=$!
    redirector upstream-k8s-store "$K8S_STORE_IP" "$K8S_STORE" --mode bucket
    K8S_STORE_PID=$!
    redirector upstream-sso "$SSO_IP" "$SSO_HOST" --mode redirect --status 302 --to "https://$LOGIN_HOST" --all
    SSO_PID=$!
    redirector upstream-login "$LOGIN_IP" "$LOGIN_HOST" --mode login
    LOGIN_PID=$!
    redirector upstream-liar "$LIAR_IP" "$LIAR_HOST" --mode liar --claim "${DIGEST[quay]}"
    LIAR_PID=$!
    wait_for "$K8S_HOST" "$K8S_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$K8S_HOST/v2/" &&
        wait_for "$K8S_STORE" "$K8S_STORE_PID" 100 0.1 http_code_in 404 app_curl --max-time 2 "https://$K8S_STORE/x" &&
        wait_for "$SSO_HOST" "$SSO_PID" 100 0.1 http_code_in 302 app_curl --max-time 2 "https://$SSO_HOST/v2/" &&
        wait_for "$LOGIN_HOST" "$LOGIN_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$LOGIN_HOST/login" &&
        wait_for "$LIAR_HOST" "$LIAR_PID" 100 0.1 http_code_in 200 app_curl --max-time 2 "https://$LIAR_HOST/v2/"
}
stop_trust_upstreams() {
    stop_forget "${K8S_PID:-}" "${K8S_STORE_PID:-}" "${SSO_PID:-}" "${LOGIN_PID:-}" "${LIAR_PID:-}"
    K8S_PID='' K8S_STORE_PID='' SSO_PID='' LOGIN_PID='' LIAR_PID=''
}

ZERO_DIGEST=sha256:$(printf '%064d' 0)
world_k8s_redirects() {
    local out
    for path in "/v2/no/such/repo/blobs/$ZERO_DIGEST" "/v2/x/manifests/$ZERO_DIGEST" "/v2/x/manifests/latest"; do
        out=$(app_curl -I -o /dev/null -w '%{http_code} %{redirect_url}' "https://$K8S_HOST$path")
        echo "HEAD $path: $out"
        [[ $out == "307 https://$K8S_STORE$path" ]] || { echo "want a 307 to the store"; return 1; }
        out=$(app_curl -L -o /dev/null -w '%{http_code} %{url_effective}' "https://$K8S_HOST$path")
        echo "GET -L $path: $out"
        [[ $out == "404 https://$K8S_STORE$path" ]] || { echo "want a 404 from the store"; return 1; }
    done
}
world_sso_login() {
    local out
    for path in /v2/ "/v2/team/app/manifests/latest" "/v2/x/blobs/$ZERO_DIGEST"; do
        out=$(app_curl -L -o /dev/null -w '%{http_code} %{content_type} %{url_effective} (%{num_redirects} redirect)' \
            "https://$SSO_HOST$path")
        echo "GET -L $path: $out"
        [[ $out == "200 text/html"*" https://$LOGIN_HOST/login?next="* ]] || { echo "want the login page"; return 1; }
    done
}

world_liar() {
    local out path=/v2/team/app/manifests/v1
    out=$(app_curl -I -o /dev/null -w '%{http_code} %header{docker-content-digest}' "https://$LIAR_HOST$path")
    echo "HEAD $path: $out"
    expect_eq "$out" "200 ${DIGEST[quay]}" "HEAD answer"
    out=$(app_curl -o "$W/liar-body" -w '%{http_code} %header{docker-content-digest}' "https://$LIAR_HOST$path")
    echo "GET $path: $out (body $(wc -c <"$W/liar-body") bytes)"
    expect_eq "$out" "200 $(sha256_of "$W/liar-body")" "GET answer and the digest of its body"
}

# A HEAD of a tag whose Docker-Content-Digest names quay.io's cached private manifest, then a GET of it
# (same Accept), anonymously: the GET must not serve that manifest (a tag maps to the digest of manifest
# bytes regcache fetched and verified).
attack_head_tag() {
    local via=$1 tag=$2 path leaks=0 method
    path=/v2/team/app/manifests/$tag
    for method in HEAD GET GET; do
        attack_get "$via" "$method" "$LIAR_HOST" "$path" -H 'Accept: application/vnd.oci.image.manifest.v1+json'
        if [[ $method == GET && ($A_SUM == "${DIGEST[quay]}" || ($A_CODE == 2* && $A_DCD == "${DIGEST[quay]}")) ]]; then
            echo "  LEAK: quay.io's private manifest served for $LIAR_HOST$path"; leaks=$((leaks + 1))
        fi
    done
    expect_eq "$leaks" 0 "GETs answered with quay.io's private manifest"
}

# the quay.io private layer and manifest (Basic auth) are in the cache: served as HITs with credentials
private_cached() {
    local blob path out i
    blob=$(quay_blob)
    for path in "blobs/$blob" "manifests/${DIGEST[quay]}"; do
        for ((i = 0; i < 3; i++)); do
            out=$(quay_get "$QUAY_USER:$QUAY_PASS" "/v2/corp/app/$path")
            echo "GET /v2/corp/app/$path with credentials: $out"
            [[ $out == "200 HIT"* ]] && break
            sleep 0.5
        done
        [[ $out == "200 HIT"* ]] && body_is "${path#*/}" || { echo "not served from the cache"; return 1; }
    done
}

# attack_get VIA METHOD HOST PATH [CURL-ARGS...]: one anonymous request from CLI through the appliance, over
# HTTPS (the name resolved by the appliance's DNS, as the clients do) or the plain-HTTP mirror (?ns=HOST).
# Sets A_CODE A_TYPE A_DCD A_XC A_SUM (the body's digest, GET only) and prints one line.
# is allowed only as the upstream's login page (text/html, not naming the digest).
attack_cached_private() {
    local host=$1 via=$2 strict=$3 blob method kind digest leaks=0 repo=e2e/any-repo
    blob=$(quay_blob)
    for kind in blobs manifests; do
        digest=$blob
        [[ $kind == manifests ]] && digest=${DIGEST[quay]}
        for method in HEAD GET; do
            attack_get "$via" "$method" "$host" "/v2/$repo/$kind/$digest" \
                -H 'Accept: application/vnd.oci.image.manifest.v1+json'
            if [[ $A_SUM == "$digest" || $A_DCD == "$digest" ]]; then
                echo "  LEAK: the appliance served (or vouched for) quay.io's private $digest"; leaks=$((leaks + 1))
            elif [[ $A_CODE == 2* ]] && [[ $strict == yes || $A_TYPE != text/html* ]]; then
                echo "  LEAK: a 2xx that is not the upstream's own answer"; leaks=$((leaks + 1))
            fi
        done
    done
    expect_eq "$leaks" 0 "requests answered with the private object"
}

# An anonymous GET of a tag through the login-page registry: not stored, not mapped, not public.
attack_login_tag() {
    local path=/v2/team/app/manifests/latest listed
    attack_get https GET "$SSO_HOST" "$path" -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
    listed=$(app "$BIN" cache ls --config "$RC/config.toml" --registry "$SSO_HOST" --repo team/app 2>&1 | grep -c '^sha256:' || true)
    echo "objects referenced from $SSO_HOST/team/app in the cache: $listed"
    app "$BIN" cache ls --config "$RC/config.toml" --registry "$SSO_HOST" --repo team/app 2>&1 | sed -n '1,5p' || true
    # the upstream goes away (connection refused), the tag's TTL (2s) passes: would it be served offline?
    stop_pid "$SSO_PID"
    sleep 2.5
    attack_get https GET "$SSO_HOST" "$path" -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
    local code=$A_CODE
    attack_get https GET "$SSO_HOST" "/v2/team/app/blobs/$(quay_blob)"
    local blob_code=$A_CODE blob_sum=$A_SUM
    expect_eq "$listed" 0 "objects stored for $SSO_HOST/team/app after the login page"
    [[ $code != 2* ]] || { echo "the login page's answer was served with the upstream down (x-cache $A_XC)"; return 1; }
    [[ $blob_code != 2* && $blob_sum != "$(quay_blob)" ]] || { echo "a private layer was served offline"; return 1; }
}

# A blob whose upstream (Docker Hub) redirects to the CDN, requested with Cookie and Authorization:
# HEAD and a ranged GET (passed through: not cached yet), then a GET (the fill).
COOKIE_SECRET=e2e-session-$RANDOM$RANDOM
attack_cookie_redirect() {
    local blob token n0 lines bad url
    blob=$(first_blob cookie)
    url=https://$HUB_HOST/v2/library/cookiejar/blobs/$blob
    token=$(cli_curl -f "https://$AUTH_HOST/token?service=registry.docker.io&scope=repository:library/cookiejar:pull" | jq -er .token)
    n0=$(wc -l <"$LOGS/upstream-cdn.log")
    local auth=(-H "Authorization: Bearer $token" -H "Cookie: session=$COOKIE_SECRET")
    echo "HEAD: $(cli_curl -I -o /dev/null -w '%{http_code} %header{x-cache}' "${auth[@]}" "$url")"
    echo "GET 0-0: $(cli_curl -o /dev/null -w '%{http_code} %header{x-cache}' -H 'Range: bytes=0-0' "${auth[@]}" "$url")"
    echo "GET: $(cli_curl -o "$W/cookie-body" -w '%{http_code} %header{x-cache}' "${auth[@]}" "$url")"
    expect_eq "$(sha256_of "$W/cookie-body")" "$blob" "digest of the blob's body"
    sleep 0.3
    lines=$(tail -n "+$((n0 + 1))" "$LOGS/upstream-cdn.log" | grep -F "/${blob#sha256:}/data" || true)
    echo "CDN log lines for the blob:"; echo "$lines"
    [[ -n $lines ]] || { echo "the CDN saw no request for the blob (no redirect followed?)"; return 1; }
    bad=$(grep -cE 'hdrs=\[[^]]*(authorization|cookie)' <<<"$lines" || true)
    expect_eq "$bad" 0 "CDN requests that carried Authorization or Cookie"
}

phase_run() {
    run_check_here "attack setup: $K8S_HOST (307 to its store), its store, $SSO_HOST (302 to its login host), its login host and $LIAR_HOST start" \
        start_trust_upstreams
    run_check "attack world: $K8S_HOST answers any /v2/ object with a 307 to $K8S_STORE, which answers 404" world_k8s_redirects
    run_check "attack world: $SSO_HOST answers everything with a 302 to $LOGIN_HOST, which answers 200 text/html" world_sso_login
    run_check "attack world: $LIAR_HOST's HEAD of a tag names quay.io's private manifest digest; its GET serves another manifest" \
        world_liar
    run_check "attack setup: quay.io's private layer and manifest are cached (HIT with credentials)" private_cached
    run_check "attack: a HEAD of a tag through $LIAR_HOST naming quay.io's cached private manifest, then GETs of that tag (anonymous, HTTPS): that manifest is not served" \
        attack_head_tag https v1
    run_check "attack: the same through the mirror listener (?ns=$LIAR_HOST): not served" attack_head_tag mirror v2
    run_check "attack: quay.io's cached private layer/manifest by digest through $K8S_HOST over HTTPS (anonymous HEAD/GET): not served" \
        attack_cached_private "$K8S_HOST" https yes
    run_check "attack: the same through the mirror listener (?ns=$K8S_HOST): not served" \
        attack_cached_private "$K8S_HOST" mirror yes
    run_check "attack: quay.io's cached private layer/manifest through $SSO_HOST (302 to a login page) over HTTPS: not served" \
        attack_cached_private "$SSO_HOST" https no
    run_check "attack: the same through the mirror listener (?ns=$SSO_HOST): not served" \
        attack_cached_private "$SSO_HOST" mirror no
    run_check "attack: Cookie and Authorization are not sent to the CDN a Docker Hub blob redirects to" attack_cookie_redirect
    run_check "attack: an anonymous tag GET answered by $SSO_HOST's login page is not stored or mapped, nor served once that upstream is gone" \
        attack_login_tag
    stop_trust_upstreams
}

