#!/usr/bin/env bash
# Bring the appliance up on its embedded defaults in ./data (or $APPLIANCE_DATA):
# SoftHSM token with random PINs, SQLite database, the audit key, and the
# quickstart ceremony's hierarchy (P-256 root, issuing CA, OCSP signer), then a
# passing self-test, a signed audit checkpoint and a verified audit log. Safe to
# run again: an existing data directory is reused, never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
DATA=${APPLIANCE_DATA:-./data}
A=".venv/bin/appliance"
if [ ! -f "$DATA/appliance.yaml" ]; then
  "$A" quickstart --dir "$DATA"
fi
"$A" --dir "$DATA" db upgrade
# Data directories from before sealed provisioner keys: plaintext keys are sealed.
"$A" --dir "$DATA" provisioner seal --all --generate-password
"$A" --dir "$DATA" hsm selftest
"$A" --dir "$DATA" audit checkpoint
"$A" --dir "$DATA" audit verify
"$A" --dir "$DATA" authority list
echo
echo "The appliance is up in $DATA and now serves (Ctrl-C stops it). In another shell:"
echo "  export PATH=\"$PWD/.venv/bin:\$PATH\" APPLIANCE_CONFIG=\"$(cd "$DATA" && pwd)/appliance.yaml\""
echo "  appliance token admin --san web.example.com --password-file $DATA/secrets/provisioner-admin.password"
echo "  curl --cacert $DATA/tls/roots.pem https://127.0.0.1:8443/1.0/health"
[ "${APPLIANCE_NO_SERVE:-}" = 1 ] && exit 0
exec "$A" --dir "$DATA" serve
