"""The appliance configuration file (``appliance.yaml``) and how it is found.

Found at ``--config PATH``, else ``$APPLIANCE_CONFIG``, else ``DIR/appliance.yaml``
with ``--dir DIR``. Relative paths inside it resolve against its folder, so a
data directory can be moved as a whole. Unknown keys are errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance import durations, hosts, strict_yaml
from appliance.errors import ConfigError

CONFIG_NAME = "appliance.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The shape every URL put into a certificate must have (the x509 vocabulary's rule: a dotted
# host name or an IP literal, an optional port): checked here too, so that a base URL no
# certificate could carry is refused when the file is read, not at the first issuance.
_CERT_URL = re.compile(
    r"^https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?(/\S{0,400})?$")


def _check_public_base_url(url: str) -> None:
    m = _CERT_URL.match(url)
    port = m.group(3) if m else None
    if m is None or (port is not None and not 1 <= int(port[1:]) <= 65_535):
        raise ValueError(
            f"service.public_base_url {url[:100]!r}: it goes into every certificate's CRL, "
            "OCSP and CA-issuer URLs, so it must be http(s)://HOST[:PORT][/PATH] with a "
            "dotted host name or an IP address and a port from 1 to 65535")


class DatabaseConfig(_Strict):
    # sqlite:///FILE (relative: to this file's folder) or postgresql://user@host/db (several
    # nodes sharing one CA); APPLIANCE_DATABASE_URL overrides it.
    url: str = "sqlite:///appliance.db"
    pool_size: int = Field(default=5, ge=1, le=100)
    busy_timeout_seconds: float = Field(default=30.0, gt=0, le=600)


class HsmConfig(_Strict):
    # The PKCS#11 token profile (module, token, PIN source): see hsm_profiles/.
    profile: Path = Path("hsm.yaml")
    # The root key lives in a token of its own that this node never opens (an offline root
    # node signs this node's CA certificates); serve refuses to start, and root ceremonies
    # are refused, if this profile's token can reach a root's key.
    root_offline: bool = False
    # In the service each API worker checks the token in the background this often (the
    # slot list and token info: nothing a signature waits on); readiness and metrics
    # report what it saw.
    probe_interval_seconds: float = Field(default=2.0, ge=0.1, le=300)
    # After a loss, re-initialising and logging in again is tried after this delay,
    # doubling up to recovery_backoff_max_seconds (so signing resumes within about that
    # long of the token's return); a refused PIN is never retried.
    recovery_backoff_initial_seconds: float = Field(default=0.25, ge=0.01, le=60)
    recovery_backoff_max_seconds: float = Field(default=2.0, ge=0.01, le=600)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> HsmConfig:
        if self.recovery_backoff_max_seconds < self.recovery_backoff_initial_seconds:
            raise ValueError("hsm.recovery_backoff_max_seconds must be at least "
                             "recovery_backoff_initial_seconds")
        return self


class AuditConfig(_Strict):
    key_label: str = Field(default="audit-key", min_length=1, max_length=64)
    # A checkpoint after this many records (1: after every record, so every commit) and/or
    # once the newest is this old; 0 turns either off. Records after the newest checkpoint
    # are the window no anchor covers yet.
    checkpoint_every: int = Field(default=100, ge=0, le=1_000_000)
    checkpoint_interval_seconds: int = Field(default=300, ge=0, le=86_400 * 7)
    # The service checks both as it writes records (else only `audit checkpoint --if-needed`
    # and ceremonies do).
    checkpoint_in_service: bool = True
    # Every checkpoint is also written outside the database: into a data object in the token
    # (audit-anchor-<node>), appended to this file (relative to the data dir; opened
    # O_APPEND, make it append-only with chattr +a or ship it elsewhere; null: none), and
    # to syslog/journald when /dev/log exists.
    anchor_token: bool = True
    anchor_file: Path | None = Path("audit-anchors.jsonl")
    anchor_syslog: bool = True


Duration = Annotated[str, Field(pattern=r"^(\d{1,7}[smhd])+$")]


class ClaimsConfig(_Strict):
    """Authority-wide defaults; each provisioner may override any of them."""

    min_duration: Duration = "5m"
    max_duration: Duration = "24h"
    default_duration: Duration = "24h"
    disable_renewal: bool = False
    allow_renewal_after_expiry: bool = False
    renewal_grace: Duration | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ClaimsConfig:
        # A default left unset is clamped into the bounds at issuance (``max_duration: 1h``
        # alone means a 1h default); one written outside them is a mistake.
        default = (durations.parse(self.default_duration)
                   if "default_duration" in self.model_fields_set else None)
        durations.check_bounds(durations.parse(self.min_duration), default,
                               durations.parse(self.max_duration), "claims")
        return self


class ServiceConfig(_Strict):
    """``appliance serve``: the HTTPS API and the plain-HTTP CRL/OCSP listener."""

    # host:port of the HTTPS API (REST and ACME) and of the plain-HTTP OCSP/CRL listener.
    api_listen: str = Field(default="127.0.0.1:8443", pattern=r"^[\w.:\[\]-]+:\d{1,5}$")
    http_listen: str = Field(default="127.0.0.1:8080", pattern=r"^[\w.:\[\]-]+:\d{1,5}$")
    # The API: worker processes, each one event loop (TLS handshakes, reading requests,
    # every idle or slow connection: none of it holds a thread) and this many threads that
    # run requests once they have fully arrived (appliance/web/api_server.py).
    workers: int = Field(default=2, ge=1, le=64)
    threads: int = Field(default=4, ge=1, le=64)
    # A whole request (head and body) must arrive within this many seconds (else 408).
    timeout_seconds: int = Field(default=30, ge=1, le=600)
    # ...its head (request line and header fields) within this many.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # A TLS handshake not done within this many seconds is cut.
    handshake_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # After 5 s of a body, one arriving slower than this (octets a second) is cut (408).
    body_min_bytes_per_second: int = Field(default=1024, ge=0, le=1 << 30)
    # An idle keep-alive connection is closed after this many seconds.
    keepalive_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Open connections (handshaking, idle, reading, answered) per worker process.
    max_connections: int = Field(default=4096, ge=1, le=1_000_000)
    # ...and per client address on the whole listener (each worker enforces its share,
    # rounded up); beyond it a new connection is closed at once.
    max_connections_per_address: int = Field(default=256, ge=1, le=1_000_000)
    # Work that waits has a deadline: a request waits at most this many seconds for a
    # thread, the database's lock or a token session, then answers 503 with Retry-After
    # (and frees its thread).
    deadline_seconds: float = Field(default=10.0, gt=0, le=600)
    # At most this many requests per worker wait for a thread; beyond, 503 at once.
    queue_limit: int = Field(default=64, ge=0, le=100_000)
    # Retry-After (seconds) on every 503 of the API.
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    # A serial reservation still open after this long belongs to a request that died (a
    # killed worker): a sweeper in every API worker of every node ends it as failed and
    # audits it (checking every min(30 s, half this)). null: 2 x (timeout_seconds +
    # database.busy_timeout_seconds), twice what one request may take. A request slower
    # than this loses its reservation and fails closed (nothing is issued under a swept one).
    reservation_timeout_seconds: int | None = Field(default=None, ge=5, le=86_400)
    # The plain-HTTP listener (OCSP, CRLs, CA certificates), keep-alive on:
    # "httptools" (default): the appliance's own lean HTTP/1.1 server (asyncio Protocol on
    #   uvloop with the httptools parser, one SO_REUSEPORT process per worker;
    #   appliance/web/prefork.py), the fastest (bench/ocsp_load.sh);
    # "uvicorn": the ASGI app under gunicorn's uvicorn worker;
    # "gthread": the WSGI app under gunicorn's threaded worker (the plainest, slowest).
    # Two processes by default, so OCSP lookups use both cores of a small node.
    http_server: Literal["httptools", "uvicorn", "gthread"] = "httptools"
    http_workers: int = Field(default=2, ge=1, le=64)
    # gthread: threads per worker; httptools: threads per worker for the non-OCSP routes.
    http_threads: int = Field(default=8, ge=1, le=64)
    # Where relying parties fetch CRLs and OCSP: goes into issued certificates.
    public_base_url: str = Field(default="http://127.0.0.1:8080", pattern=r"^https?://\S+$")
    # The hostname clients use for the API (the TLS certificate's name, token audiences).
    api_hostname: str = Field(default="127.0.0.1", max_length=253)
    # The API's base URL as clients reach it (https://ca.example.com, or with a port, e.g.
    # behind a proxy): every ACME URL is built from it, never from the request's Host.
    # null: https://<api_hostname>:<api_listen's port>.
    external_url: str | None = Field(default=None, max_length=300,
                                     pattern=r"^https://[^/?#@\s]+/?$")
    # Host header values the API answers ("name", "name:port", "[v6]:port"; no port means
    # 443); any other request gets 400 before any work. The external URL's host is always
    # accepted. Empty: that one plus the API TLS certificate's names (api_hostname and
    # 127.0.0.1) at api_listen's port.
    allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=list, max_length=64)
    issuing_authority: str = Field(default="issuing", max_length=64)
    max_request_bytes: int = Field(default=65_536, ge=1024, le=1_048_576)
    rate_limit_per_minute: int = Field(default=1200, ge=0, le=1_000_000)
    # Where serve writes the API's TLS key and certificate (relative: to this file's folder;
    # under systemd use a path in the state directory, e.g. /var/lib/appliance/tls).
    tls_dir: Path = Path("tls")

    @model_validator(mode="after")
    def _hosts(self) -> ServiceConfig:
        try:
            if self.external_url is not None:
                hosts.parse(self.external_url.removeprefix("https://").rstrip("/"))
            for h in self.allowed_hosts:
                hosts.parse(h)
            if self.external_url is None:
                hosts.parse(self.api_hostname if ":" not in self.api_hostname
                            else f"[{self.api_hostname}]")
        except hosts.HostError as exc:
            raise ValueError(f"service: {exc}") from None
        _check_public_base_url(self.public_base_url)
        return self

    def external_base_url(self) -> str:
        """``external_url`` (no trailing slash), or the one the defaults describe."""
        if self.external_url is not None:
            return self.external_url.rstrip("/")
        port = int(self.api_listen.rsplit(":", 1)[1])
        host = f"[{self.api_hostname}]" if ":" in self.api_hostname else self.api_hostname
        return "https://" + hosts.render(hosts.parse(host, port))

    def api_tls_names(self) -> list[str]:
        """The names the API's TLS certificate carries (``appliance serve`` issues it)."""
        return list(dict.fromkeys([self.api_hostname, "127.0.0.1"]))

    def accepted_hosts(self) -> frozenset[hosts.Authority]:
        """What a request's Host may name (normalised), see ``allowed_hosts``."""
        external = hosts.parse(self.external_base_url().removeprefix("https://"))
        if self.allowed_hosts:
            return frozenset([external, *(hosts.parse(h) for h in self.allowed_hosts)])
        port = int(self.api_listen.rsplit(":", 1)[1])
        tls_names = (f"[{n}]" if ":" in n else n for n in self.api_tls_names())
        return frozenset([external, *(hosts.parse(n, port) for n in tls_names)])


class RevocationConfig(_Strict):
    """CRLs: nextUpdate at most 10 days after thisUpdate (BR); republished by the timer."""

    crl_validity: Duration = "7d"
    # Above this many entries only a sample is linted (pkilint's cost grows with entries).
    crl_full_lint_max_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    # Sharded CRLs: 0 = off (one CRL per authority). N > 0: a new leaf certificate's CRL DP
    # names /crl/<authority>/<serial mod N>.crl, each shard a complete CRL of its own.
    # Changing N later leaves issued certificates on the shard (or unsharded CRL) they name.
    crl_shards: int = Field(default=0, ge=0, le=4096)
    # Every CRL (each shard too) is republished when it is this old, and at once when a
    # revocation in its scope is newer than it.
    crl_republish: Duration = "1d"
    # `appliance serve` checks this often which CRLs are due (`crl publish --due`) and
    # publishes them; 0 = never (an appliance-crl.timer of systemd does it instead).
    crl_check_seconds: int = Field(default=300, ge=0, le=86_400)

    @model_validator(mode="after")
    def _bounded(self) -> RevocationConfig:
        if durations.parse(self.crl_validity) > 10 * 86400:
            raise ValueError("revocation.crl_validity must be at most 10 days")
        if durations.parse(self.crl_republish) < 60:
            raise ValueError("revocation.crl_republish must be at least 1m")
        if durations.parse(self.crl_republish) >= durations.parse(self.crl_validity):
            raise ValueError("revocation.crl_republish must be shorter than crl_validity")
        return self


class OcspConfig(_Strict):
    """OCSP pre-signing and the responder (see appliance/ocsp/)."""

    # nextUpdate - thisUpdate of every signed response: 8 hours .. 10 days (BR).
    validity: Duration = "4d"
    # Certificates stay answerable for this long after they expire.
    expired_grace: Duration = "1d"
    # Optional shared response cache (and cross-node revocation epoch), e.g.
    # redis://127.0.0.1:6379/0; keys start with redis_prefix.
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://\S+$")
    redis_prefix: str = Field(default="appliance:ocsp:", max_length=64)
    # Responses each responder process keeps in memory (least recently used go first); an
    # entry holds both CertID variants, ~2 KB with a delegated signer's certificate.
    memory_entries: int = Field(default=20_000, ge=0, le=10_000_000)
    # A cached "good" is re-read from the database at least this often even when no
    # revocation was announced (bounds the damage of a revocation whose announcement was lost).
    revalidate_seconds: int = Field(default=60, ge=1, le=86_400)
    # Parallel pre-signing processes for large batches (each with its own token sessions).
    presign_processes: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _bounded(self) -> OcspConfig:
        if not 8 * 3600 <= durations.parse(self.validity) <= 10 * 86400:
            raise ValueError("ocsp.validity must be between 8h and 10d (BR)")
        return self


class AcmeConfig(_Strict):
    """The ACME server's validation and lifetimes (RFC 8555, RFC 8737, RFC 8738, RFC 9773).

    By default validation is exactly as the RFCs say (ports 80 and 443, the system
    resolver), so clients work unmodified; on a private network the ports and the DNS
    resolvers ("ip" or "ip:port") can be overridden.
    """

    http01_port: int = Field(default=80, ge=1, le=65535)
    tls_alpn01_port: int = Field(default=443, ge=1, le=65535)
    resolvers: list[Annotated[str, Field(pattern=r"^[0-9A-Fa-f:.\[\]]{2,60}$")]] = Field(
        default_factory=list, max_length=8)
    validation_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Issuer domain names this CA answers to in CAA records (RFC 8659, with RFC 8657's
    # accounturi and validationmethods); empty: CAA is not checked.
    caa_identities: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]{1,253}$")]] = Field(
        default_factory=list, max_length=8)
    # Validations run in a bounded pool of threads per API worker; a challenge POST waits
    # at most this long for the outcome, then answers "processing" (the client polls).
    max_concurrent_validations: int = Field(default=16, ge=1, le=256)
    validation_wait_seconds: float = Field(default=1.0, ge=0, le=30)
    order_lifetime: Duration = "1d"
    nonce_lifetime: Duration = "1h"
    # `appliance acme prune` (daily timer) deletes orders that ended this long ago: failed
    # or expired ones after their expiry, valid ones after their certificate's.
    retention: Duration = "30d"
    # Retry-After (seconds) sent with orders/challenges still processing and with ARI.
    retry_after_seconds: int = Field(default=3, ge=1, le=86_400)
    ari_retry_after_seconds: int = Field(default=21_600, ge=60, le=86_400 * 7)


class LoggingConfig(_Strict):
    # Operational log (JSON lines on stderr; the audit log is separate): debug .. error.
    level: str = Field(default="INFO", pattern=r"^(?i:debug|info|warning|error)$")


class FipsConfig(_Strict):
    # FIPS-style mode: approved algorithms only, self-tests that gate, officer quorum. Chosen
    # at init (``appliance init --fips``) and recorded in the database; a node whose file
    # says otherwise refuses to start.
    enabled: bool = False
    # Crypto-officer actions in FIPS mode (key generation, ceremonies, zeroization, seal)
    # need this many distinct registered crypto officers (``appliance fips officer add``).
    quorum: int = Field(default=2, ge=1, le=16)


class RaConfig(_Strict):
    """A registration authority (``role: ra``): forwards requests to its upstream.

    An RA node holds no CA key and signs no certificate: it authenticates its clients
    with its own provisioners and policies, then forwards over mutual TLS (its credential
    key stays in its token) to its upstream, the CA or a parent RA, which decides again.
    """

    # This RA's name as its upstream registered it (`provisioner add NAME --type ra`).
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # https://host:port of the upstream's API (the CA or a parent RA).
    upstream_url: str | None = Field(default=None, max_length=300,
                                     pattern=r"^https://[^/?#@\s]+/?$")
    # The upstream's root certificate(s) (PEM): its API's TLS certificate and every
    # certificate forwarded back must chain to them; also this node's client roots.
    upstream_root: Path = Path("ra/upstream-root.pem")
    # The token label of the RA credential key (EC P-256) used for mutual TLS and the
    # hop assertions, and the credential certificate (leaf then intermediates).
    credential_label: str = Field(default="ra-credential", min_length=1, max_length=64)
    credential_cert: Path = Path("ra/credential.pem")
    # A forward not answered within this many seconds fails as upstream_unavailable (503).
    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # ACME orders left processing while the upstream was away are re-forwarded this often.
    retry_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # The credential is renewed through the upstream once this fraction of its lifetime
    # has elapsed.
    renew_fraction: float = Field(default=0.66, gt=0, lt=1)
    # On a node that registers RAs (the CA or a parent RA): the lifetime of the
    # credentials it issues (short-lived; each RA node renews its own).
    credential_lifetime: Duration = "72h"

    def upstream_base_url(self) -> str:
        """``upstream_url`` without its trailing slash (a configured RA has one)."""
        if self.upstream_url is None:
            raise ConfigError("ra.upstream_url is not set (run `appliance ra init`)")
        return self.upstream_url.rstrip("/")


class ClusterConfig(_Strict):
    """Nodes that share one database: their heartbeats (``appliance cluster status``)."""

    # Each serving node writes its heartbeat row (version, schema, token reachable,
    # self-tests) this often.
    heartbeat_seconds: int = Field(default=10, ge=1, le=300)
    # A node whose last heartbeat is older than this shows as stale and no longer holds a
    # schema upgrade back; more than heartbeat_seconds (clocks of the nodes kept in step).
    stale_after_seconds: int = Field(default=30, ge=2, le=3600)

    @model_validator(mode="after")
    def _stale_after_beats(self) -> ClusterConfig:
        if self.stale_after_seconds <= self.heartbeat_seconds:
            raise ValueError("cluster.stale_after_seconds must be more than "
                             "cluster.heartbeat_seconds")
        return self


class ApplianceConfig(_Strict):
    # This node's name in the audit log (each node of a shared database has its own).
    node_id: str = Field(default="node-1", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # "online": serves the API and OCSP/CRLs. "offline-root": holds an offline root; only
    # ceremonies and operator commands run here, ``serve`` refuses. "ra": a registration
    # authority (no CA key; see the ra section).
    role: Literal["online", "offline-root", "ra"] = "online"
    database: DatabaseConfig = DatabaseConfig()
    hsm: HsmConfig = HsmConfig()
    audit: AuditConfig = AuditConfig()
    logging: LoggingConfig = LoggingConfig()
    claims: ClaimsConfig = ClaimsConfig()
    service: ServiceConfig = ServiceConfig()
    revocation: RevocationConfig = RevocationConfig()
    ocsp: OcspConfig = OcspConfig()
    acme: AcmeConfig = AcmeConfig()
    fips: FipsConfig = FipsConfig()
    ra: RaConfig = RaConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _ra_named(self) -> ApplianceConfig:
        if self.role == "ra" and (self.ra.name is None or self.ra.upstream_url is None):
            raise ValueError("role ra needs ra.name and ra.upstream_url")
        return self


class Settings:
    """A loaded configuration plus the folder its relative paths are read against."""

    def __init__(self, config: ApplianceConfig, base_dir: Path, path: Path | None = None) -> None:
        self.config = config
        self.base_dir = base_dir
        self.path = path

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def database_url(self) -> str:
        """The database URL; ``APPLIANCE_DATABASE_URL`` overrides the file (for tests and ops)."""
        url = os.environ.get("APPLIANCE_DATABASE_URL") or self.config.database.url
        return resolve_sqlite_url(url, self.base_dir)

    def path_of(self, path: Path) -> Path:
        """A configured path, relative ones read against the configuration's folder."""
        return path if path.is_absolute() else self.base_dir / path

    @property
    def hsm_profile_path(self) -> Path:
        """The token profile file; the runtime reads it (the ground floor knows no token)."""
        path = self.config.hsm.profile
        return path if path.is_absolute() else self.base_dir / path


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///file`` URL absolute against ``base``."""
    m = re.match(r"^sqlite(\+\w+)?:///(?!/)(.+)$", url)
    if m and m.group(2) != ":memory:":
        return f"sqlite{m.group(1) or ''}:///{(base / m.group(2)).resolve()}"
    return url


def locate(config: Path | None, directory: Path | None) -> Path:
    if config is not None:
        return config
    env = os.environ.get("APPLIANCE_CONFIG")
    if env:
        return Path(env)
    if directory is not None:
        return directory / CONFIG_NAME
    raise ConfigError(
        "no configuration: pass --config PATH or --dir DIR, or set APPLIANCE_CONFIG"
    )


def load(path: Path) -> Settings:
    text = strict_yaml.read_text(path, "configuration")
    cfg = strict_yaml.parse(text, ApplianceConfig, str(path), "configuration")
    return Settings(cfg, path.parent.resolve(), path)
