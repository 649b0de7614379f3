#!/usr/bin/env bash
# Install what the appliance and its tests need on a Debian machine (run as root):
# Debian packages (SoftHSM v2, OpenSC's pkcs11-tool, OpenSSL, ...) and the Python
# package with its test extras in ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v softhsm2-util >/dev/null 2>&1 || need_pkgs+=(softhsm2)
command -v pkcs11-tool  >/dev/null 2>&1 || need_pkgs+=(opensc)
command -v openssl      >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v git          >/dev/null 2>&1 || need_pkgs+=(git)
command -v pg_isready   >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
command -v redis-cli    >/dev/null 2>&1 || need_pkgs+=(redis-tools)
# The cluster tests start (and stop) a Redis server of their own on a free port.
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v jq           >/dev/null 2>&1 || need_pkgs+=(jq)
command -v curl         >/dev/null 2>&1 || need_pkgs+=(curl)
# ACME clients the tests run against the server (Debian's certbot 2.1 and lego 4.9).
command -v certbot      >/dev/null 2>&1 || need_pkgs+=(certbot)
command -v lego         >/dev/null 2>&1 || need_pkgs+=(lego)
# The RA's upstream client (issue 15) is pycurl built against Debian's libcurl/OpenSSL, so
# OpenSSL's pkcs11 engine (libp11) can hold the mTLS client key in the token.
command -v gcc          >/dev/null 2>&1 || need_pkgs+=(gcc)
for pkg in libcurl4-openssl-dev libssl-dev libengine-pkcs11-openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || need_pkgs+=("$pkg")
done
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  need_pkgs+=(python3 python3-venv python3-dev)
else
  "$PY" -m venv --help >/dev/null 2>&1 || need_pkgs+=(python3-venv)
  # pycurl is compiled here: it needs Python's headers.
  "$PY" -c 'import os, sysconfig; assert os.path.exists(os.path.join(
      sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null || need_pkgs+=(python3-dev)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# --no-binary pycurl: a PyPI wheel bundles its own libcurl and OpenSSL, which cannot load
# Debian's pkcs11 engine; built here it links the system's (checked below).
.venv/bin/python -m pip install -q --no-binary pycurl -e '.[test]'
if ! .venv/bin/python - <<'PYCHECK' >/dev/null 2>&1
import os, pycurl
assert "OpenSSL/3" in pycurl.version
assert not os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(pycurl.__file__)),
                                      "pycurl.libs"))
PYCHECK
then
  .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-binary pycurl pycurl
fi
# Bytecode for the (editable) package, written once: with PYTHONDONTWRITEBYTECODE set (as
# in the systemd units, and on some machines) every process would otherwise compile it.
.venv/bin/python -m compileall -q appliance >/dev/null
# An ACME Renewal Information (RFC 9773) client: Debian's certbot 2.1 predates ARI, so the
# ARI test runs certbot from PyPI, in its own venv (its pins stay out of the appliance's).
if [ ! -x .venv-clients/bin/certbot ]; then
  "$PY" -m venv .venv-clients
  .venv-clients/bin/python -m pip install -q "certbot==5.8.0"
fi
echo "installed: $(.venv/bin/appliance --version); ARI client: $(.venv-clients/bin/certbot --version 2>&1)"
