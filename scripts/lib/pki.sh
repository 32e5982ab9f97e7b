# shellcheck shell=bash
# The test world's public PKI (sourced by scripts/e2e.sh and bench/run.sh): a CA and server leaves
# minted per run with openssl (P-256, valid 2 days). Nothing is checked in.

pki_ca() { # DIR CN: DIR/ca.crt and DIR/ca.key
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$1/ca.key" -out "$1/ca.crt" -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

# pki_leaf DIR BASE NAME...: DIR/BASE.crt and .key, a server certificate for the DNS NAMEs (CN the first)
pki_leaf() {
    local dir=$1 base=$2 san; shift 2
    san=$(printf 'DNS:%s,' "$@")
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/$base.key" -out "$dir/$base.csr" -subj "/CN=$1"
    printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "${san%,}" >"$dir/$base.ext"
    pki_sign "$dir" "$base"
}
pki_sign() { # DIR BASE: DIR/BASE.csr signed by DIR's CA with DIR/BASE.ext
    openssl x509 -req -in "$1/$2.csr" -CA "$1/ca.crt" -CAkey "$1/ca.key" -CAcreateserial -days 2 \
        -extfile "$1/$2.ext" -out "$1/$2.crt"
}

# pki_signer DIR BASE CN: an RS256 signing certificate (a token service's; distribution checks its x5c
# chain against the CA)
pki_signer() {
    openssl req -newkey rsa:2048 -nodes -keyout "$1/$2.key" -out "$1/$2.csr" -subj "/CN=$3"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >"$1/$2.ext"
    pki_sign "$1" "$2"
}
