#!/usr/bin/env bash
# Install the peers and load tools the benchmarks in bench/ run against, on a Debian machine
# (run as root). Not part of the test command (scripts/test.sh, .ci/run): tests and CI need
# none of these. Safe to run again; prints nothing unless it installs something.
#
#   golang-cfssl    cfssl serve (bench/issuance.py --vs-cfssl), cfssl ocspserve (ocsp_load.sh)
#   pebble          Let's Encrypt's test ACME CA (bench/acme.py)
#   nginx-light     static pre-signed OCSP responses, the ceiling (ocsp_load.sh)
#   nghttp2-client  h2load, the HTTP load generator of ocsp_load.sh
#   wrk             an HTTP/1.1 load generator, for ad-hoc runs against any of the servers
#   openssl         openssl ocsp, the live-signing peer (ocsp_load.sh), and the CA tooling
#
# The Python side (./.venv) comes from scripts/install.sh: run that first.
set -euo pipefail

# package -> a file it installs (checked instead of dpkg's status: quicker, and it also
# notices a package whose files were removed by hand)
declare -A want=(
  [golang-cfssl]=/usr/bin/cfssl
  [pebble]=/usr/bin/pebble
  [nginx-light]=/usr/sbin/nginx
  [nghttp2-client]=/usr/bin/h2load
  [wrk]=/usr/bin/wrk
  [openssl]=/usr/bin/openssl
)
need=()
for pkg in golang-cfssl pebble nginx-light nghttp2-client wrk openssl; do
  if [ "$pkg" = nginx-light ] && command -v nginx >/dev/null 2>&1; then
    continue  # any nginx will do (ocsp_load.sh looks for `nginx`)
  fi
  [ -x "${want[$pkg]}" ] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-peers: need root to install: ${need[*]}" >&2
  exit 1
fi
echo "bench-peers: installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: nginx-light alone, not a web server stack; and no service starts:
# policy-rc.d refuses it for the duration (the benchmarks start their own instances on free
# ports), so an installed nginx does not sit on port 80 afterwards.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2> >(grep -v "^debconf: delaying" >&2)
for pkg in "${need[@]}"; do
  [ -x "${want[$pkg]}" ] || { echo "bench-peers: $pkg installed but ${want[$pkg]} is missing" >&2; exit 1; }
done
echo "bench-peers: ready: $(cfssl version 2>/dev/null | head -n1 | tr -s ' '), pebble, $(nginx -v 2>&1), $(h2load --version 2>/dev/null | head -n1), wrk"
