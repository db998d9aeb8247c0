#!/usr/bin/env bash
# The TLS listener rated by testssl.sh (Debian package `testssl.sh`): starts
# Portcullis with a fresh self-signed certificate on a loopback port, runs the
# TLS checks (protocols, ciphers, forward secrecy, server preference, server
# defaults, vulnerabilities; not the HTTP header checks: HSTS and the like are
# the operator's to set per route with `response_headers`), and lists every
# finding rated LOW or worse. Findings that only say the certificate is
# self-signed (trust, revocation, CAA) are expected and listed apart. Exits 1
# when anything else is found. Takes a few minutes.
#
#   bash benches/testssl.sh          PORTCULLIS_BIN=target/debug/portcullis bash benches/testssl.sh
source "$(dirname "$0")/lib.sh"
need testssl openssl python3
[ -n "${PORTCULLIS_BIN:-}" ] || release_build
gw=$(free_port); tls=$(free_port); admin=$(free_port); backend=$(free_port)
start_backend "$backend" 0
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cat > "$work/tls.yaml" <<YAML
listen:
  - addr: "127.0.0.1:$gw"
  - addr: "127.0.0.1:$tls"
    tls: { cert: "$work/tls.crt", key: "$work/tls.key" }
admin: { addr: "127.0.0.1:$admin" }
threads: 1
log: { level: warn }
upstreams: { u: { peers: ["127.0.0.1:$backend"] } }
routes: [{ name: r, path: /, upstream: u, auth: none }]
YAML
start_portcullis "$tls" "$work/tls.yaml" 0
timeout 900 testssl --quiet --color 0 --warnings off --openssl-timeout 5 -p -s -f -P -S -U \
  --jsonfile "$work/testssl.json" "127.0.0.1:$tls" > "$work/testssl.txt" 2>&1 || true
python3 - "$work/testssl.json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
bad = {"LOW", "MEDIUM", "HIGH", "CRITICAL"}
# A self-signed certificate is untrusted, unrevocable and has no CAA record.
expected = ("cert_chain_of_trust", "cert_trust", "cert_caIssuers", "cert_crlDistributionPoints",
            "cert_ocspURL", "OCSP_stapling", "DNS_CAArecord", "cert_validityPeriod",
            "cert_expirationStatus", "cert_commonName_wo_SNI", "cert_subjectAltName",
            "cert_revocation")
rated = [f for f in findings if f.get("severity") in bad]
others = [f for f in rated if not f["id"].startswith(expected)]
for f in rated:
    tag = "expected (self-signed)" if f not in others else "FINDING"
    print(f'{tag}: {f["id"]} [{f["severity"]}] {f["finding"]}')
print(f"testssl.sh: {len(others)} finding(s) beyond the self-signed certificate")
sys.exit(1 if others else 0)
PY
