#!/usr/bin/env bash
# Bring the appliance up on its embedded defaults in ./data (or $APPLIANCE_DATA):
# SoftHSM token with random PINs, SQLite database, the audit key, and the
# quickstart ceremony's hierarchy (P-256 root, issuing CA, OCSP signer), then a
# passing self-test, a signed audit checkpoint and a verified audit log, then serve
# (APPLIANCE_NO_SERVE=1: stop there). Safe to run again: an existing data directory
# is reused, never overwritten. APPLIANCE_SKIP_INSTALL=1 skips scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${APPLIANCE_SKIP_INSTALL:-}" = 1 ] || ./scripts/install.sh
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
ABS_DATA=$(cd "$DATA" && pwd)
# Where this configuration serves (not the defaults: appliance.yaml may have changed them).
{ read -r API_URL; read -r HTTP_URL; read -r ROOTS; } < <(
  "$A" --dir "$DATA" config show --json | .venv/bin/python -c '
import json, os, sys
doc = json.load(sys.stdin)
svc = doc["config"]["service"]
host, port = svc["api_hostname"], svc["api_listen"].rsplit(":", 1)[1]
host = f"[{host}]" if ":" in host else host
tls = svc["tls_dir"]
tls = tls if os.path.isabs(tls) else os.path.join(os.path.dirname(doc["path"]), tls)
print(f"https://{host}:{port}")
print(svc["public_base_url"].rstrip("/"))
print(os.path.join(tls, "roots.pem"))
')
echo
if [ "${APPLIANCE_NO_SERVE:-}" = 1 ]; then
  echo "The appliance is set up in $DATA; not serving (APPLIANCE_NO_SERVE=1). Start it with:"
  echo "  $PWD/$A --dir \"$ABS_DATA\" serve"
  echo "It will answer the API at $API_URL and OCSP/CRLs at $HTTP_URL. Then, in another shell:"
else
  echo "The appliance is up in $DATA and now serves the API at $API_URL and OCSP/CRLs at"
  echo "$HTTP_URL (Ctrl-C stops it). In another shell:"
fi
echo "  export PATH=\"$PWD/.venv/bin:\$PATH\" APPLIANCE_CONFIG=\"$ABS_DATA/appliance.yaml\""
echo "  appliance token admin --san web.example.com --password-file \"$ABS_DATA/secrets/provisioner-admin.password\""
echo "      # a one-time token for $API_URL/1.0/sign"
echo "  curl --cacert $ROOTS $API_URL/1.0/health"
[ "${APPLIANCE_NO_SERVE:-}" = 1 ] && exit 0
exec "$A" --dir "$DATA" serve
