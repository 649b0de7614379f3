#!/bin/sh
# lego `--dns exec` provider for tests: EXEC_PATH=tests/acme_lego_dns_exec.sh.
# lego runs `SCRIPT present|cleanup FQDN VALUE`; we keep "FQDN VALUE" lines in the file
# named by $ACME_DNS_RECORDS, which tests/acme_dns.py's DnsServer re-reads per query.
set -eu
: "${ACME_DNS_RECORDS:?ACME_DNS_RECORDS must name the DnsServer records file}"
if [ "$#" -lt 3 ]; then
    echo "usage: $0 present|cleanup FQDN VALUE" >&2
    exit 2
fi
action=$1 fqdn=$2 value=$3
case "$action" in
    present)
        printf '%s %s\n' "$fqdn" "$value" >> "$ACME_DNS_RECORDS"
        ;;
    cleanup)
        if [ -f "$ACME_DNS_RECORDS" ]; then
            tmp=$(mktemp "$ACME_DNS_RECORDS.XXXXXX")
            grep -v -x -F -e "$fqdn $value" "$ACME_DNS_RECORDS" > "$tmp" || true
            mv "$tmp" "$ACME_DNS_RECORDS"
        fi
        ;;
    *)
        echo "$0: unknown action '$action'" >&2
        exit 2
        ;;
esac
