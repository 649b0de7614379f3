"""Every error says once whose failure it is and how REST and ACME answer it
(``appliance.errors``); the REST handler and the ACME problem mapper read only that."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import appliance
from appliance.acme.finalize import retryable
from appliance.acme.problems import STATUS, AcmeProblem, problem_of
from appliance.errors import (
    ApplianceError,
    AuditError,
    DatabaseError,
    HsmUnavailableError,
    InputError,
    KeyNotFoundError,
)
from appliance.issuance.pipeline import AuthorityUnavailable, CredentialNamesError, IssuanceError
from appliance.policy import PolicyError
from appliance.revocation.reasons import ReasonError
from appliance.revocation.revoke import AlreadyRevoked, NotIssued
from appliance.templates.errors import TemplateError
from appliance.web.errors import status_of
from appliance.x509.path import PathError


def _all_error_classes() -> list[type[ApplianceError]]:
    for mod in pkgutil.walk_packages(appliance.__path__, "appliance."):
        if mod.name.endswith("__main__") or ".migrations" in mod.name:  # alembic runs those
            continue
        importlib.import_module(mod.name)
    found: list[type[ApplianceError]] = []
    todo: list[type[ApplianceError]] = [ApplianceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__qualname__)
def test_every_error_class_is_classified_consistently(cls: type[ApplianceError]) -> None:
    assert isinstance(cls.server_fault, bool) and isinstance(cls.public_detail, bool)
    assert cls.acme_type in STATUS, f"{cls.__qualname__}: {cls.acme_type} is no ACME problem"
    # A fault of ours is a 5xx (the client may come back), a client's error a 4xx.
    assert (500 <= cls.status < 600) if cls.server_fault else (400 <= cls.status < 500)
    assert (cls.acme_type == "serverInternal") == cls.server_fault


@pytest.mark.parametrize("exc", [AuditError("the audit log is full"),
                                 HsmUnavailableError("token gone"),
                                 DatabaseError("locked"), KeyNotFoundError("no key")])
def test_faults_of_ours_are_5xx_in_rest_and_acme_and_say_no_internals(exc: ApplianceError
                                                                      ) -> None:
    assert status_of(exc) == 503
    problem = problem_of(exc)
    assert (problem.kind, problem.status) == ("serverInternal", 503)
    assert str(exc) not in problem.detail
    assert retryable(exc)  # an ACME order it interrupted stays ready


def test_an_unavailable_authority_is_a_fault_whose_text_is_for_the_client() -> None:
    exc = AuthorityUnavailable("authority sub is revoked; nothing is issued")
    assert status_of(exc) == 503 and retryable(exc)
    problem = problem_of(exc)
    assert (problem.kind, problem.status, problem.detail) == ("serverInternal", 503, str(exc))


def test_client_errors_map_to_their_rest_status_and_acme_type() -> None:
    cases: list[tuple[ApplianceError, int, str]] = [
        (IssuanceError("the CSR signature does not verify"), 400, "badCSR"),
        (TemplateError("tls-server", "bad output"), 422, "badCSR"),
        (InputError("csr", "not a CSR"), 400, "malformed"),
        (AlreadyRevoked("certificate 1f is already revoked (keyCompromise)"), 400,
         "alreadyRevoked"),
        (ReasonError("unknown revocation reason code 11"), 400, "badRevocationReason"),
        (NotIssued("no issued certificate with serial 1f"), 404, "malformed"),
        (PathError("name_constraints", "sub", "db.other.test is excluded"), 403,
         "rejectedIdentifier"),
        (PathError("path_length", "sub", "too deep"), 403, "unauthorized"),
    ]
    for exc, status, kind in cases:
        assert status_of(exc) == status, exc
        problem = problem_of(exc)
        assert (problem.kind, problem.status, problem.detail) == (kind, STATUS[kind], str(exc))
        assert not retryable(exc), exc  # refused for what it asks: the order ends


def test_a_policy_refusal_names_the_identifier() -> None:
    exc = PolicyError("db.other.test", "dns", "authority", "other.test", "denied")
    assert status_of(exc) == 403
    problem = problem_of(exc)
    assert problem.kind == "rejectedIdentifier" and problem.status == 400
    assert problem.subproblems[0]["identifier"] == {"type": "dns", "value": "db.other.test"}
    assert not retryable(exc)


def test_finalize_leaves_the_order_ready_for_a_csr_with_other_names_or_a_bug() -> None:
    assert retryable(CredentialNamesError("the CSR asks for names ...: extra.test"))
    assert retryable(RuntimeError("a bug"))
    assert not retryable(AcmeProblem("badCSR", "no"))
    assert retryable(AcmeProblem("serverInternal", "no", status=503))
    problem = problem_of(RuntimeError("secret internals"))
    assert (problem.kind, problem.status) == ("serverInternal", 500)
    assert "secret" not in problem.detail


def test_a_database_read_that_fails_is_a_fault_in_acme_too() -> None:
    """A locked or unreachable database met by a read (SQLAlchemy's own errors, not yet a
    DatabaseError) is answered as ours by ACME as by REST: 503, no internals."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    for exc in (OperationalError("SELECT 1", {}, Exception("database is locked")),
                PoolTimeout("QueuePool limit reached")):
        problem = problem_of(exc)
        assert (problem.kind, problem.status) == ("serverInternal", 503)
        assert "locked" not in problem.detail and "QueuePool" not in problem.detail
