# shellcheck shell=bash
# Phase world: the upstreams work on their own, checked straight from APP (trusting the public CA, the
# upstream names in APP's hosts file for skopeo), before the appliance starts.
PHASE_NEEDS=(no-appliance-yet)

world_hub_redirect() {
    local token out
    token=$(hub_token library/small pull anonymous)
    out=$(app_curl -o /dev/null -w '%{http_code} %{redirect_url}' -H "Authorization: Bearer $token" \
        "https://$HUB_HOST/v2/library/small/blobs/$(first_blob small)")
    echo "$out"
    [[ $out == "307 https://$CDN_HOST/docker/registry/v2/blobs/"* ]]
}
world_hub_401() {
    local hdr
    hdr=$(app_curl -o /dev/null -w '%{http_code} %header{www-authenticate}' "https://$HUB_HOST/v2/")
    echo "$hdr"
    [[ $hdr == "401 Bearer realm=\"https://$AUTH_HOST/token\",service=\"registry.docker.io\""* ]]
}
world_anonymous_private() {
    local token
    token=$(hub_token e2eprivate/secret pull anonymous)
    http_code_in 401 app_curl -H "Authorization: Bearer $token" "https://$HUB_HOST/v2/e2eprivate/secret/manifests/1"
}
world_skopeo() { # REF KEY [copy]
    local got
    got=$(isolated "$APP_NS" skopeo inspect --cert-dir "$PKI/certdir" --format '{{.Digest}}' "docker://$1")
    expect_eq "$got" "${DIGEST[$2]}" "digest of $1"
    if [[ ${3:-} == copy ]]; then
        isolated "$APP_NS" timeout 300 skopeo copy --src-cert-dir "$PKI/certdir" "docker://$1" "oci:$W/world-copy-$2:x"
    fi
}
world_quay_basic() {
    local hdr got
    hdr=$(app_curl -o /dev/null -w '%{http_code} %header{www-authenticate}' "https://$QUAY_HOST/v2/")
    echo "anonymous /v2/: $hdr"
    [[ $hdr == '401 Basic realm="e2e-quay"'* ]] || { echo "want a 401 with a Basic challenge"; return 1; }
    got=$(isolated "$APP_NS" skopeo inspect --cert-dir "$PKI/certdir" --creds "$QUAY_USER:$QUAY_PASS" \
        --format '{{.Digest}}' "docker://$QUAY_HOST/corp/app:1")
    expect_eq "$got" "${DIGEST[quay]}" "digest of $QUAY_HOST/corp/app:1 read with credentials"
}

phase_run() {
    app_hosts on
    run_check "world: $HUB_HOST /v2/ is 401 with the auth.docker.io Bearer realm" world_hub_401
    run_check "world: $HUB_HOST blob GET is a 307 to $CDN_HOST" world_hub_redirect
    run_check "world: anonymous token cannot read e2eprivate/secret" world_anonymous_private
    run_check "world: skopeo (direct) library/small:1" world_skopeo "$HUB_HOST/library/small:1" small copy
    run_check "world: skopeo (direct) library/alpine-ish:latest (OCI index)" world_skopeo "$HUB_HOST/library/alpine-ish:latest" alpine copy
    run_check "world: skopeo (direct) ghcr.io/acme/tool:v1" world_skopeo "$GHCR_HOST/acme/tool:v1" tool
    run_check "world: skopeo (direct) nvcr.io/nvidia/tiny:25.03" world_skopeo "$NVCR_HOST/nvidia/tiny:25.03" tiny
    run_check "world: $QUAY_HOST wants Basic auth; skopeo (direct) with credentials reads corp/app:1" world_quay_basic
    app_hosts off
}
