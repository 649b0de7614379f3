#!/usr/bin/env bash
# OCSP under load: the appliance's responder against nginx (static pre-signed DER, the
# ceiling), cfssl ocspserve (the same pre-signed responses) and openssl ocsp (signing live),
# driven by h2load (HTTP/1.1) on the same machine. Prints numbers, asserts none.
#
#   bench/ocsp_load.sh [--dir DIR] [--certificates N] [--rounds R] [--duration S]
#                      [--connections C] [--openssl-requests N] [--peers "appliance nginx ..."]
#
# Needs: nghttp2-client (h2load); optional: nginx-light (or nginx), golang-cfssl, openssl.
# A peer that is missing or does not start is reported as "skipped: reason".
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
DIR=""
CERTS=100000
ROUNDS=3
DURATION=10
CONNS=64
THREADS=1
OPENSSL_N=50000
PEERS="appliance nginx cfssl openssl"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --certificates) CERTS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --connections) CONNS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --openssl-requests) OPENSSL_N="$2"; shift 2 ;;
    --peers) PEERS="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

command -v h2load >/dev/null || { echo "h2load not found: apt-get install -y nghttp2-client" >&2; exit 2; }
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ocsp-load-XXXXXX")"
chmod 755 "$WORK"  # nginx's workers run as www-data and must read WORK/www
[ -z "$DIR" ] && DIR="$WORK/data"
DIR="$(mkdir -p "$DIR" && cd "$DIR" && pwd)"
PIDS=()        # process-group leaders started here (setsid), stopped at exit
YAML_BACKUP=""

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  [ -n "$YAML_BACKUP" ] && cp "$YAML_BACKUP" "$DIR/appliance.yaml"
  rm -rf "$WORK"  # with --dir, DIR is elsewhere and stays
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# started NAME CMD...: start CMD in a session of its own, remember its group
started() {
  local name="$1"; shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
}

stop() {  # stop the process group led by $1
  kill -TERM -- "-$1" 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL -- "-$1" 2>/dev/null
}

# wait_http URL METHOD [BODY]: until it answers 200 (30 s)
wait_http() {
  for _ in $(seq 1 150); do
    if [ "$2" = POST ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/ocsp-request' \
             --data-binary @"$3" "$1" 2>/dev/null)
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)
    fi
    [ "$code" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}

# -- 1. data: N issued certificates with pre-signed responses --------------------------------
echo "setting up $DIR ($CERTS certificates) ..."
"$PY" "$REPO/bench/presign.py" --keep "$DIR" --certificates "$CERTS" --setup-only || exit 1
T0=$(date +%s)
(cd "$REPO" && env -u SOFTHSM2_CONF "$PY" -m appliance --dir "$DIR" ocsp presign --stale) || exit 1
echo "presign --stale took $(( $(date +%s) - T0 )) s"

# -- 2. exports: GET paths, POST body, nginx files, cfssl responses, openssl index ------------
(cd "$REPO" && env -u SOFTHSM2_CONF "$PY" - "$DIR" "$WORK" <<'EOF'
import base64, random, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import select
from appliance import config
from appliance.ocsp.certid import cert_id_hashes
from appliance.ops import authorities as authz
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, OcspResponse

d, work = Path(sys.argv[1]), Path(sys.argv[2])
app = Appliance(config.load(d / "appliance.yaml"))
with app.db.sessions() as db:
    ca = db.query(Authority).filter(Authority.name == "issuing").one()
    issuer = authz.certificate(ca)
    rows = db.execute(select(OcspResponse.serial_hex, OcspResponse.der, Certificate.not_after)
                      .join(Certificate, Certificate.id == OcspResponse.certificate_id)
                      .where(OcspResponse.authority_id == ca.id,
                             OcspResponse.status == "good")).all()
app.close()
name_hash, key_hash = cert_id_hashes(issuer)["sha1"]

def request(serial_hex):
    return ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, int(serial_hex, 16), hashes.SHA1()
    ).build().public_bytes(serialization.Encoding.DER)

(work / "issuing.pem").write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
root = work / "www" / "ocsp"
root.mkdir(parents=True)
paths = []
with open(work / "cfssl.responses", "w") as cf, open(work / "index.txt", "w") as idx:
    for serial_hex, der, not_after in rows:
        # RFC 5019 GET path, URL-safe base64 without padding: one path segment, no escaping,
        # so nginx finds the file under the very name the appliance is asked for.
        b64 = base64.urlsafe_b64encode(request(serial_hex)).rstrip(b"=").decode()
        (root / b64).write_bytes(der)
        paths.append(f"/ocsp/{b64}")
        cf.write(base64.b64encode(der).decode() + "\n")
        s = serial_hex.upper()
        s = "0" * (len(s) % 2) + s
        idx.write(f"V\t{not_after:%y%m%d%H%M%SZ}\t\t{s}\tunknown\t/CN=bench-{s}\n")
random.shuffle(paths)
(work / "paths.txt").write_text("\n".join(paths) + "\n")
(work / "post.der").write_bytes(request(random.choice(rows)[0]))
print(f"exported {len(rows)} pre-signed responses (nginx files, cfssl file, openssl index)")
EOF
) || exit 1

# uris FILE PORT: h2load takes scheme, host and port from the first URI only
uris() { { printf 'http://127.0.0.1:%s%s\n' "$2" "$(head -1 "$WORK/paths.txt")"; tail -n +2 "$WORK/paths.txt"; } >"$1"; }

# -- 3. the peers ------------------------------------------------------------------------------
declare -A PORT SKIP
for p in $PEERS; do PORT[$p]=$(free_port); done

start_appliance() {
  YAML_BACKUP="$WORK/appliance.yaml.orig"
  cp "$DIR/appliance.yaml" "$YAML_BACKUP"
  local api; api=$(free_port)
  "$PY" - "$DIR/appliance.yaml" "$api" "${PORT[appliance]}" <<'EOF'
import re, sys
path, api, http = sys.argv[1], sys.argv[2], sys.argv[3]
text = re.sub(r"(?m)^service:\n(?:[ \t]+.*\n?)*", "", open(path).read())
open(path, "w").write(text.rstrip("\n") + f"\nservice:\n  api_listen: 127.0.0.1:{api}\n"
                      f"  http_listen: 127.0.0.1:{http}\n"
                      f"  public_base_url: http://127.0.0.1:{http}\n")
EOF
  started appliance env -u SOFTHSM2_CONF -C "$REPO" "$PY" -m appliance --dir "$DIR" serve
  uris "$WORK/uris.appliance" "${PORT[appliance]}"
  wait_http "http://127.0.0.1:${PORT[appliance]}$(head -1 "$WORK/paths.txt")" GET \
    || { SKIP[appliance]="did not answer within 30 s (log: tail below)"; tail -5 "$WORK/appliance.log"; }
}

start_nginx() {
  local bin; bin=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$bin" ] || { SKIP[nginx]="nginx not installed (apt-get install -y nginx-light)"; return; }
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  keepalive_requests 1000000;
  open_file_cache max=200000 inactive=60s;
  server {
    listen 127.0.0.1:${PORT[nginx]};
    root $WORK/www;
    location /ocsp/ { default_type application/ocsp-response; }
  }
}
EOF
  started nginx "$bin" -c "$WORK/nginx.conf" -p "$WORK/nginx"
  uris "$WORK/uris.nginx" "${PORT[nginx]}"
  wait_http "http://127.0.0.1:${PORT[nginx]}$(head -1 "$WORK/paths.txt")" GET \
    || SKIP[nginx]="did not start: $(tail -1 "$WORK/nginx.log" "$WORK/nginx/error.log" 2>/dev/null | tr '\n' ' ')"
}

start_cfssl() {
  command -v cfssl >/dev/null || { SKIP[cfssl]="cfssl not installed (apt-get install -y golang-cfssl)"; return; }
  started cfssl cfssl ocspserve -address 127.0.0.1 -port "${PORT[cfssl]}" \
    -responses "$WORK/cfssl.responses" -loglevel 3
  wait_http "http://127.0.0.1:${PORT[cfssl]}/" POST "$WORK/post.der" \
    || SKIP[cfssl]="did not answer within 30 s: $(tail -1 "$WORK/cfssl.log")"
}

# One process: with -multi 2 (OpenSSL 3.0.19 here) it accepts connections and never answers.
start_openssl() {  # a fresh process per round (see the README: it can spin after idle clients)
  command -v openssl >/dev/null || { SKIP[openssl]="openssl not installed"; return; }
  if [ ! -f "$WORK/rsigner.pem" ]; then
    # Throw-away software responder key and self-signed certificate, for this peer only:
    # openssl ocsp cannot use the token. Its responses do not verify against the CA.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=bench openssl ocsp responder" -keyout "$WORK/rkey.pem" -out "$WORK/rsigner.pem" \
      >/dev/null 2>&1 || { SKIP[openssl]="could not make a responder key"; return; }
  fi
  started openssl openssl ocsp -index "$WORK/index.txt" -CA "$WORK/issuing.pem" \
    -rsigner "$WORK/rsigner.pem" -rkey "$WORK/rkey.pem" -port "${PORT[openssl]}" -nmin 60
  OPENSSL_PID=$LAST_PID
  wait_http "http://127.0.0.1:${PORT[openssl]}/" POST "$WORK/post.der" \
    || SKIP[openssl]="did not answer within 30 s: $(tail -1 "$WORK/openssl.log")"
}

for p in $PEERS; do
  case "$p" in
    appliance) start_appliance ;;
    nginx) start_nginx ;;
    cfssl) start_cfssl ;;
    openssl) start_openssl; [ -z "${SKIP[openssl]:-}" ] && stop "$OPENSSL_PID" ;;
    *) echo "unknown peer $p" >&2; exit 2 ;;
  esac
done

# -- 4. rounds ---------------------------------------------------------------------------------
# run NAME ROUND h2load-args...: one measurement; its per-request log goes to WORK/NAME.ROUND
run() {
  local name="$1" round="$2"; shift 2
  h2load --h1 -c "$CONNS" -t "$THREADS" --log-file="$WORK/$name.$round.log" "$@" \
    >"$WORK/$name.$round.out" 2>&1
  echo "$name" >>"$WORK/measured"
}

GETS=(); for p in appliance nginx; do [[ " $PEERS " == *" $p "* ]] && [ -z "${SKIP[$p]:-}" ] && GETS+=("$p"); done
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS ..."
  order=("${GETS[@]}")
  [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${GETS[@]}" | tac))
  for p in "${order[@]}"; do
    run "$p-get" "$r" -D "$DURATION" --warm-up-time=1 -i "$WORK/uris.$p"
  done
  if [[ " $PEERS " == *" appliance "* ]] && [ -z "${SKIP[appliance]:-}" ]; then
    run appliance-post "$r" -D "$DURATION" --warm-up-time=1 -d "$WORK/post.der" \
      -H 'Content-Type: application/ocsp-request' "http://127.0.0.1:${PORT[appliance]}/ocsp"
  fi
  if [[ " $PEERS " == *" cfssl "* ]] && [ -z "${SKIP[cfssl]:-}" ]; then
    run cfssl-post "$r" -D "$DURATION" --warm-up-time=1 -d "$WORK/post.der" \
      -H 'Content-Type: application/ocsp-request' "http://127.0.0.1:${PORT[cfssl]}/"
  fi
  if [[ " $PEERS " == *" openssl "* ]] && [ -z "${SKIP[openssl]:-}" ]; then
    start_openssl
    if [ -z "${SKIP[openssl]:-}" ]; then
      run openssl-post "$r" -n "$OPENSSL_N" -d "$WORK/post.der" \
        -H 'Content-Type: application/ocsp-request' "http://127.0.0.1:${PORT[openssl]}/"
      stop "$OPENSSL_PID"
    fi
  fi
done

# -- 5. report ---------------------------------------------------------------------------------
SKIPS=""
for p in $PEERS; do [ -n "${SKIP[$p]:-}" ] && SKIPS+="$p	${SKIP[$p]}"$'\n'; done
ELAPSED=$(( $(date +%s) - START ))
"$PY" - "$WORK" "$ROUNDS" "$DURATION" "$CONNS" "$THREADS" "$CERTS" "$ELAPSED" "$SKIPS" <<'EOF'
import os, re, statistics, sys
from pathlib import Path

work, rounds, duration, conns, threads, certs, elapsed, skips = sys.argv[1:9]
work, rounds = Path(work), int(rounds)
measured = sorted(set((work / "measured").read_text().split())) if (work / "measured").exists() else []
ORDER = ["appliance-get", "nginx-get", "appliance-post", "cfssl-post", "openssl-post"]
WHAT = {"appliance-get": "appliance  GET random serials (pre-signed)",
        "nginx-get": "nginx      GET same paths, static DER files",
        "appliance-post": "appliance  POST one fixed request",
        "cfssl-post": "cfssl      POST one fixed request (pre-signed)",
        "openssl-post": "openssl    POST one fixed request (signs live, 1 proc)"}

def one(name, r):
    out = (work / f"{name}.{r}.out").read_text()
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    rps = float(m.group(3)) if m else 0.0
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    failed = int(m.group(4)) + int(m.group(5)) if m else -1
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    non2xx = sum(int(x) for x in m.groups()[1:]) if m else -1
    lat = []
    log = work / f"{name}.{r}.log"
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
    return rps, pct(0.50), pct(0.99), failed + max(non2xx, 0)

rows = {}
for name in ORDER:
    if name not in measured:
        continue
    res = [one(name, r) for r in range(1, rounds + 1) if (work / f"{name}.{r}.out").exists()]
    rps = [x[0] for x in res]
    rows[name] = (statistics.median(rps), statistics.median(x[1] for x in res),
                  statistics.median(x[2] for x in res), sum(x[3] for x in res),
                  (max(rps) - min(rps)) / statistics.median(rps) if statistics.median(rps) else 0)

print()
print(f"OCSP load benchmark: h2load --h1, {conns} connections, {threads} thread(s), "
      f"{duration} s per measurement (+1 s warm-up; openssl: request count), {rounds} round(s), medians")
print(f"{certs} certificates; {os.cpu_count()} CPU(s) shared by server and load generator; run took {elapsed} s")
print()
print(f"{'peer / request':<52} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'spread':>6}")
print("-" * 92)
for name, (rps, p50, p99, err, spread) in rows.items():
    print(f"{WHAT[name]:<52} {rps:>9.0f} {p50:>7.2f} {p99:>7.2f} {err:>6} {100 * spread:>5.0f}%")
for line in skips.strip().splitlines():
    peer, _, reason = line.partition("\t")
    print(f"{peer:<10} skipped: {reason}")
print()

def goal(label, ok, text):
    print(f"{label}: {text} - {'meets the goal' if ok else 'BELOW the goal'}")

a_get, a_post = rows.get("appliance-get"), rows.get("appliance-post")
if a_post and "cfssl-post" in rows:
    x = a_post[0] / rows["cfssl-post"][0]
    goal("appliance/cfssl (POST)", x >= 1.0, f"{x:.2f}x (goal >= 1.0x)")
else:
    print("appliance/cfssl (POST): n/a")
if a_get and "nginx-get" in rows:
    x = a_get[0] / rows["nginx-get"][0]
    goal("appliance/nginx (GET)", x >= 0.45, f"{100 * x:.0f}% (goal >= 45%)")
else:
    print("appliance/nginx (GET): n/a")
if a_get:
    goal("appliance p99 (GET)", a_get[2] <= 10, f"{a_get[2]:.2f} ms (goal <= 10 ms)")
if a_post and "openssl-post" in rows:
    print(f"appliance/openssl (POST, openssl signing live): {a_post[0] / rows['openssl-post'][0]:.1f}x")
EOF
