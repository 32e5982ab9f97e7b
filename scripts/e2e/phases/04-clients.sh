# shellcheck shell=bash
# Phase clients: dockerd, skopeo and podman in the client namespace pull by unchanged names through the
# appliance (digests as pushed); a push passes through to the upstream; a private repository stays
# private for anonymous clients, also after an authorised read.
PHASE_NEEDS=(appliance client-dockerd)

dockerd_token_logged() {
    grep -E "$DOCKER_TOKEN_RE" "$ACCESS_LOG" | sed -n '1,3p' || true
    [[ $(docker_token_lines) -gt 0 ]] || { echo "no line matches /$DOCKER_TOKEN_RE/"; return 1; }
}
push_through() {
    cli_skopeo copy --preserve-digests "oci:$W/images/pushed:1" "docker://ghcr.io/acme/pushed:1"
    local got
    got=$(app_curl -f -o /dev/null -w '%header{docker-content-digest}' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "https://$GHCR_HOST/v2/acme/pushed/manifests/1")
    expect_eq "$got" "${DIGEST[pushed]}" "upstream digest of acme/pushed:1"
    local kind blob _
    while read -r kind blob _; do
        [[ $kind == blob ]] || continue
        http_code_in 200 app_curl -I "https://$GHCR_HOST/v2/acme/pushed/blobs/$blob"
    done <"$W/images/pushed/push-plan"
}

phase_run() {
    if [[ $DOCKER_OK == 1 ]]; then
        run_check "dockerd: pull $HUB_HOST/library/small:1" docker_pull_fresh "$HUB_HOST/library/small:1" small
        run_check "dockerd: pull small:1 (short name)" docker_pull_fresh small:1 small
        run_check "dockerd: pull docker.io/library/alpine-ish:latest (OCI index)" docker_pull docker.io/library/alpine-ish:latest alpine
        run_check "dockerd: pull ghcr.io/acme/tool:v1" docker_pull ghcr.io/acme/tool:v1 tool
        run_check "dockerd: pull nvcr.io/nvidia/tiny:25.03" docker_pull nvcr.io/nvidia/tiny:25.03 tiny
        run_check "dockerd: fetched its Docker Hub token from $AUTH_HOST through the appliance (access log)" dockerd_token_logged
    else
        run_check "dockerd starts in the client namespace (logs/dockerd.log)" false
    fi
    run_check "skopeo: docker.io/library/small:1" skopeo_pull docker.io/library/small:1 small
    run_check "skopeo: docker.io/library/alpine-ish:latest (OCI index)" skopeo_pull docker.io/library/alpine-ish:latest alpine
    run_check "skopeo: ghcr.io/acme/tool:v1" skopeo_pull ghcr.io/acme/tool:v1 tool
    run_check "skopeo: nvcr.io/nvidia/tiny:25.03" skopeo_pull nvcr.io/nvidia/tiny:25.03 tiny
    run_check "podman: docker.io/library/small:1" podman_pull docker.io/library/small:1 small
    run_check "podman: docker.io/library/alpine-ish:latest (OCI index)" podman_pull docker.io/library/alpine-ish:latest alpine
    run_check "podman: ghcr.io/acme/tool:v1" podman_pull ghcr.io/acme/tool:v1 tool
    run_check "podman: nvcr.io/nvidia/tiny:25.03" podman_pull nvcr.io/nvidia/tiny:25.03 tiny
    run_check "push: skopeo copy to ghcr.io/acme/pushed:1 through the appliance lands upstream" push_through
    run_check "private: anonymous skopeo cannot read docker.io/e2eprivate/secret:1" anonymous_private_denied
    run_check "private: skopeo with $SEED_USER's credentials reads docker.io/e2eprivate/secret:1 (digest as pushed)" \
        private_read_with_credentials
    run_check "private: anonymous skopeo still cannot read it after that authorised read" anonymous_private_denied
}
