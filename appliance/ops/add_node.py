"""``appliance cluster add-node``: a second node's data directory, made from the first's.

Nodes of one CA share everything durable through one PostgreSQL database (a SQLite file
cannot be shared by two machines, so it is refused) and sign with the same keys through
sessions of their own to the same token. What a new node therefore takes from the existing
one (A):

- the configuration, with its own ``node_id`` (its own audit chain, its own anchor in the
  token) and its own listeners; ``database.url`` as A's file has it;
- A's HSM profile with every path made absolute (the module, ``module_env``: for SoftHSM
  the very same ``softhsm2.conf`` and token store, and the start-up lock, which every
  process of that store must share), and a copy of the user-PIN file (0600);
- the ACME EAB wrapping key (made in A first if A has none yet: otherwise each node would
  make its own, and an EAB key added on one node could never be unsealed on the other).

What it does not take: A's API TLS key and certificate (``serve`` issues the node its own),
A's audit anchor file and ceremony records, the SO PIN (the token is administered where it
was made; a serving node never needs it), and the credentials of people and clients
(provisioners' token-signing keys, officers' and operators' secrets): nodes verify those
with what the database holds. The addition is audited in A's chain (``cluster.node_added``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url

from appliance import config_doc, secretfile, strict_yaml
from appliance.acme import eab
from appliance.audit.log import Actor
from appliance.config import CONFIG_NAME, ApplianceConfig, Settings, load
from appliance.errors import ApplianceError, ConfigError
from appliance.hsm.profile import HsmProfile, load_profile, parse_profile
from appliance.runtime import Appliance
from appliance.store.models import AuditEvent, AuditHead, ClusterNode

EVENT = "cluster.node_added"
PROFILE_NAME = "hsm.yaml"
HEADER = """Appliance configuration of a cluster node (made by `appliance cluster add-node` from
node {source}'s): every setting; relative paths are read against this file's folder.
Unknown keys are refused; `appliance config show` prints what is in force."""
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - listener hosts, compared


class NodeError(ApplianceError):
    """The new node cannot be made as asked; nothing was created."""

    code = "invalid"


@dataclass(frozen=True)
class AddedNode:
    node_id: str
    directory: Path
    api_listen: str
    http_listen: str
    database: str  # the URL with any password hidden
    secrets_copied: tuple[str, ...]
    secrets_left: tuple[str, ...]


def source_settings(source: Path) -> Settings:
    """A's configuration: ``source`` is its data directory or its configuration file."""
    path = source / CONFIG_NAME if source.is_dir() else source
    if not path.exists():
        raise NodeError(f"{source}: no {CONFIG_NAME} (give --from the data directory of an "
                        "existing node)")
    return load(path)


def add_node(app: Appliance, target: Path, node_id: str, actor: Actor, *,
             api_listen: str | None = None, http_listen: str | None = None) -> AddedNode:
    """Make ``target`` a node of the cluster ``app`` (node A) belongs to; audited in A's
    database. Refuses, changing nothing, whatever would make two nodes collide."""
    cfg = app.settings.config
    target = target.absolute()
    if cfg.role != "online":
        raise NodeError(f"node {cfg.node_id} has role {cfg.role!r}: add-node makes serving CA "
                        "nodes from a serving (online) node")
    if node_id == cfg.node_id:
        raise NodeError(f"node id {node_id!r} is node A's own: each node needs its own "
                        "(it names the node's audit chain)")
    database = _shared_database_url(app.settings)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise NodeError(f"{target} already exists and is not empty; refusing to clobber it")
    api = _listener("--api-listen", api_listen, cfg.service.api_listen)
    http = _listener("--http-listen", http_listen, cfg.service.http_listen)
    if api == http:
        raise NodeError(f"the API and the public listener cannot both be {api}")
    for mine, theirs in ((api, cfg.service.http_listen), (http, cfg.service.api_listen)):
        if mine == theirs and mine.rsplit(":", 1)[0] not in _WILDCARD_HOSTS:
            raise NodeError(f"{mine} is one of node A's listeners: give the new node its own")
    new_cfg = _node_config(cfg, node_id, api, http)
    source_profile = load_profile(app.settings.hsm_profile_path)
    with app.db.sessions() as s:
        _require_unused(s, node_id)
    made_wrap_key = not eab.wrap_key_path(app.settings.base_dir).exists()
    wrap_key = eab.ensure_wrap_key(app.settings.base_dir)

    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        secrets_dir = target / "secrets"
        secrets_dir.mkdir(mode=0o700)
        copied = [_copy_secret(wrap_key, secrets_dir)]
        profile_text, pin_name = _node_profile(app.settings.hsm_profile_path, secrets_dir)
        if pin_name is not None:
            copied.append(pin_name)
        (target / PROFILE_NAME).write_text(profile_text, encoding="utf-8")
        _require_same_token(source_profile, load_profile(target / PROFILE_NAME))
        (target / CONFIG_NAME).write_text(
            config_doc.document(new_cfg, HEADER.format(source=cfg.node_id)), encoding="utf-8")
        load(target / CONFIG_NAME)  # reads back as written (strict keys, patterns)
        left = sorted(p.name for p in (app.settings.base_dir / "secrets").glob("*")
                      if p.is_file() and p.name not in copied)
        with app.db.transaction() as s:
            _require_unused(s, node_id)  # again, in the transaction that records it
            app.audit_log().append(
                s, EVENT, actor, object_ids={"node_id": node_id},
                details={"from_node": cfg.node_id, "data_dir": str(target),
                         "api_listen": api, "http_listen": http,
                         "hsm_profile": source_profile.name,
                         "secrets_copied": sorted(copied),
                         "eab_wrap_key_made": made_wrap_key})
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    return AddedNode(node_id, target, api, http, database, tuple(sorted(copied)), tuple(left))


def _shared_database_url(settings: Settings) -> str:
    """A's database URL as its file names it (password hidden), if nodes can share it."""
    url = settings.config.database.url
    override = os.environ.get("APPLIANCE_DATABASE_URL")
    if override and override != url:
        raise NodeError("APPLIANCE_DATABASE_URL overrides the database.url of node A's "
                        "file: the new node is made from A's file, so write the URL there "
                        "(or unset the variable) and run add-node again")
    if url.startswith("sqlite"):
        raise NodeError(
            "node A's database is SQLite; nodes of one CA must share a server database "
            "(PostgreSQL): a SQLite file, relative or absolute, cannot be shared across "
            "machines. Move A to PostgreSQL first (database.url: "
            "postgresql+psycopg://USER@HOST/DB)")
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        raise NodeError("node A's database.url is not a database URL") from None


def _listener(option: str, given: str | None, source: str) -> str:
    """B's listener: as given; else A's, but only if A's is a wildcard address (a node per
    machine, each on the same port behind a load balancer). A loopback or specific address
    is A's machine's: B must be given its own, and the same one is refused."""
    host = source.rsplit(":", 1)[0]
    wildcard = host in _WILDCARD_HOSTS
    if given is None:
        if wildcard:
            return source
        raise NodeError(f"node A listens on {source}, an address of A's own machine: give "
                        f"the new node its own {option} HOST:PORT")
    if given == source and not wildcard:
        raise NodeError(f"{option} {given} is node A's listener: two nodes on one machine "
                        "cannot share it, and on another machine it is not that machine's")
    return given


def _node_config(cfg: ApplianceConfig, node_id: str, api: str,
                 http: str) -> ApplianceConfig:
    values: dict[str, Any] = cfg.model_dump(mode="json")
    values["node_id"] = node_id
    values["hsm"]["profile"] = PROFILE_NAME
    values["service"]["api_listen"] = api
    values["service"]["http_listen"] = http
    try:
        return ApplianceConfig.model_validate(values)
    except ValidationError as exc:
        raise NodeError(f"invalid node: {strict_yaml.summarise(exc)}") from None


def _require_unused(session: Any, node_id: str) -> None:
    """Not a node the database already knows: an audit chain, a heartbeat, or an
    earlier add-node (a node made but never started)."""
    if session.get(AuditHead, node_id) is not None:
        raise NodeError(f"node id {node_id!r} already has an audit chain in the database")
    if session.get(ClusterNode, node_id) is not None:
        raise NodeError(f"node id {node_id!r} is already a node of the cluster")
    for raw in session.scalars(select(AuditEvent.object_ids)
                               .where(AuditEvent.event_type == EVENT)):
        if json.loads(raw).get("node_id") == node_id:
            raise NodeError(f"node id {node_id!r} was already added (audited {EVENT})")


def _copy_secret(path: Path, folder: Path, name: str | None = None) -> str:
    name = name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NodeError(f"cannot read {path}: {exc.strerror}") from None
    secretfile.write_new(folder / name, data)
    return name


def _node_profile(path: Path, secrets_dir: Path) -> tuple[str, str | None]:
    """A's profile for B: every path absolute against A's profile folder (the same module,
    token store and start-up lock), the PIN file copied into B's secrets/."""
    base = path.parent.resolve()
    doc = yaml.safe_load(strict_yaml.read_text(path, "HSM profile"))
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not an HSM profile")
    module = Path(str(doc["module"]))
    doc["module"] = str(module if module.is_absolute() else base / module)
    env = doc.get("module_env") or {}
    doc["module_env"] = {k: str(v).replace("${profile_dir}", str(base)) for k, v in env.items()}
    lock = doc.get("startup_lock")
    if lock is not None and not Path(str(lock)).is_absolute():
        doc["startup_lock"] = str(base / str(lock))
    pin_name = None
    pin = doc.get("pin") or {}
    if pin.get("file") is not None:
        source = Path(str(pin["file"]))
        pin_name = _copy_secret(source if source.is_absolute() else base / source, secrets_dir)
        doc["pin"] = {"file": f"secrets/{pin_name}"}
    text = ("# HSM profile of this node (made by `appliance cluster add-node` from "
            f"{path}):\n# the same token as that node's, reached through sessions of its own.\n"
            + yaml.safe_dump(doc, sort_keys=False))
    parse_profile(text, secrets_dir.parent, str(path))  # as strict as the original
    return text, pin_name


def _require_same_token(a: HsmProfile, b: HsmProfile) -> None:
    keep = {"pin"}
    if a.model_dump(exclude=keep) != b.model_dump(exclude=keep):
        raise NodeError("the new node's HSM profile would not reach node A's token")
