"""A tiny authoritative DNS server on 127.0.0.1 for ACME tests (dns-01 and name resolution).

Every name has ``A 127.0.0.1`` unless told otherwise, so tests can use made-up names
("app.test") that land on local servers; AAAA is always empty so nothing tries ::1.
TXT and CAA records come from :meth:`DnsServer.set_txt` and :meth:`DnsServer.set_caa`;
TXT also, re-read on every query, from an optional records file (lines ``name value``)
that an outside process such as lego's ``--dns exec`` provider
(``tests/acme_lego_dns_exec.sh``) appends to.

Serves UDP and TCP on the same free port (TCP so truncated answers can be retried).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from dnslib import CAA, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


class _Resolver(BaseResolver):
    def __init__(self, owner: DnsServer) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        qname = request.q.qname
        name = _norm(str(qname))
        qtype = request.q.qtype
        owner = self.owner
        owner.queries.append((name, QTYPE[qtype]))
        with owner._lock:
            if name in owner._servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if name in owner._nxdomain:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            a = owner._a.get(name, owner.default_a)
            txt = list(owner._txt.get(name, []))
            caa = list(owner._caa.get(name, []))
        if qtype == QTYPE.A and a is not None:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(a), ttl=0))
        elif qtype == QTYPE.TXT:
            for value in txt + owner._file_txt(name):
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(value), ttl=0))
        elif qtype == QTYPE.CAA:
            for flags, tag, value in caa:
                reply.add_answer(RR(qname, QTYPE.CAA, rdata=CAA(flags, tag, value), ttl=0))
        return reply


class DnsServer:
    """``with DnsServer() as dns: ... resolvers=(f"127.0.0.1:{dns.port}",)``."""

    def __init__(self, records_file: Path | None = None, default_a: str | None = "127.0.0.1"):
        self.records_file = records_file
        self.default_a = default_a
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._a: dict[str, str | None] = {}
        self._txt: dict[str, list[str]] = {}
        self._nxdomain: set[str] = set()
        self._servfail: set[str] = set()
        self._caa: dict[str, list[tuple[int, str, str]]] = {}
        self._servers: list[DNSServer] = []

    # -- records ---------------------------------------------------------------------

    def set_a(self, name: str, ip: str | None) -> None:
        """Answer ``A ip`` for *name* (``None``: no A record, NOERROR)."""
        with self._lock:
            self._a[_norm(name)] = ip
            self._nxdomain.discard(_norm(name))

    def set_txt(self, name: str, value: str) -> None:
        """Add a TXT value at *name* (several values may coexist, as for wildcard + base)."""
        with self._lock:
            self._txt.setdefault(_norm(name), []).append(value)
            self._nxdomain.discard(_norm(name))

    def clear_txt(self, name: str) -> None:
        with self._lock:
            self._txt.pop(_norm(name), None)

    def set_caa(self, name: str, tag: str, value: str, flags: int = 0) -> None:
        """Add a CAA property at *name* (RFC 8659)."""
        with self._lock:
            self._caa.setdefault(_norm(name), []).append((flags, tag, value))

    def clear_caa(self, name: str) -> None:
        with self._lock:
            self._caa.pop(_norm(name), None)

    def set_servfail(self, name: str, on: bool = True) -> None:
        """Make every query for *name* fail with SERVFAIL (a broken zone)."""
        with self._lock:
            (self._servfail.add if on else self._servfail.discard)(_norm(name))

    def set_nxdomain(self, name: str) -> None:
        """Make *name* not exist at all (every type answers NXDOMAIN)."""
        with self._lock:
            self._nxdomain.add(_norm(name))

    def _file_txt(self, name: str) -> list[str]:
        if self.records_file is None:
            return []
        try:
            lines = self.records_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        values = []
        for line in lines:
            parts = line.split(None, 1)
            if len(parts) == 2 and _norm(parts[0]) == name:
                values.append(parts[1].strip())
        return values

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> DnsServer:
        logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False,
                           logf=lambda _s: None)
        resolver = _Resolver(self)
        for _attempt in range(20):
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True,
                                logger=logger)
            except OSError:
                udp.server.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for the test DNS server")
        self.port = port
        self._servers = [udp, tcp]
        for server in self._servers:
            # Not start_thread(): its 0.5 s poll interval makes every stop() take that long.
            threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.02},
                             name=f"dns-{port}", daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def resolver(self) -> str:
        """The ``ip:port`` string for ``ValidationSettings.resolvers``."""
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port nobody listens on right now (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
