"""The ceremony script schema (YAML, ``version: 1``).

Strict on purpose: an unknown or misspelt key, a wrong type or a second YAML
document fails validation before any PKCS#11 session is opened, because a
ceremony that silently ignored ``path_lenght: 0`` would sign the wrong CA.

A reference (``key:``, ``issuer:``, ``subject_authority:``) names an earlier
step of the same script by its ``id``; a name that is not an earlier step's id
means something that already exists: a token key label (``key:``) or a
registered authority (``issuer:``, ``subject_authority:``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.x509 import algorithms
from appliance.x509.vocabulary import (
    EkuName,
    KeyUsageName,
    NameConstraints,
    Oid,
    RevocationReason,
    SubjectAttr,
    Url,
)

Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]
Ref = Annotated[str, Field(min_length=1, max_length=64)]
AuthorityName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
YEAR = 365.25
ROOT_MAX_DAYS = int(25 * YEAR)
SUBORDINATE_MAX_DAYS = int(8 * YEAR)
OCSP_SIGNER_MAX_DAYS = 825
MAX_STEPS = 50


def _approved_key_type(name: algorithms.KeyType) -> algorithms.KeyType:
    """Refused while the script is read, before any session opens: the table decides."""
    try:
        algorithms.check_ca_key_type(name)
    except algorithms.AlgorithmRefused as exc:
        raise ValueError(str(exc)) from None
    return name


def _approved_hash(name: algorithms.HashName) -> algorithms.HashName:
    try:
        algorithms.signature_hash(name)
    except algorithms.AlgorithmRefused as exc:
        raise ValueError(str(exc)) from None
    return name


KeyType = Annotated[algorithms.KeyType, AfterValidator(_approved_key_type)]
Hash = Annotated[algorithms.HashName, AfterValidator(_approved_hash)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Validity(_Strict):
    """UTC instants; ``not_before`` defaults to the moment of signing (whole seconds)."""

    not_before: datetime | None = None
    not_after: datetime | None = None
    days: int | None = Field(default=None, ge=1, le=40 * 366)

    @model_validator(mode="after")
    def _one_end(self) -> Validity:
        if (self.not_after is None) == (self.days is None):
            raise ValueError("validity: give exactly one of 'not_after' or 'days'")
        for name in ("not_before", "not_after"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"validity.{name} must carry a time zone (use Z for UTC)")
        return self

    def resolve(self, now: datetime) -> tuple[datetime, datetime]:
        start = (self.not_before or now).astimezone(UTC).replace(microsecond=0)
        if self.not_after is not None:
            end = self.not_after.astimezone(UTC).replace(microsecond=0)
        else:
            assert self.days is not None
            end = start + timedelta(days=self.days)
        if end <= start:
            raise ValueError("validity ends before it starts")
        return start, end


class PolicyConstraints(_Strict):
    """RFC 5280 §4.2.1.11 (critical): after how many more certificates an explicit policy is
    required of the path, and policy mapping is no longer allowed."""

    require_explicit_policy: int | None = Field(default=None, ge=0, le=10)
    inhibit_policy_mapping: int | None = Field(default=None, ge=0, le=10)

    @model_validator(mode="after")
    def _one(self) -> PolicyConstraints:
        if self.require_explicit_policy is None and self.inhibit_policy_mapping is None:
            raise ValueError("policy_constraints: give require_explicit_policy and/or "
                             "inhibit_policy_mapping")
        return self


class Quorum(_Strict):
    """Dual control: this step runs only after ``required`` distinct officers of
    ``officers`` have authenticated in this run."""

    required: int = Field(ge=1, le=16)
    officers: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]] = Field(
        min_length=1, max_length=32
    )

    @model_validator(mode="after")
    def _enough(self) -> Quorum:
        if len(set(self.officers)) != len(self.officers):
            raise ValueError("quorum.officers lists an officer twice")
        if self.required > len(self.officers):
            raise ValueError("quorum.required is larger than the number of officers")
        return self


class _Step(_Strict):
    id: Id
    quorum: Quorum | None = None


class _Signed(_Step):
    """What every step that signs something can say about the signature."""

    signature_hash: Hash | None = None
    rsa_padding: Literal["pkcs1v15", "pss"] = "pkcs1v15"
    skip_lints: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=50
    )


class _Certificate(_Signed):
    subject: dict[SubjectAttr, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1
    )
    validity: Validity
    serial_bits: int = Field(default=127, ge=64, le=159)
    key_usage: list[KeyUsageName] | None = None
    extended_key_usage: list[EkuName | Oid] | None = None
    policies: list[Oid] = Field(default_factory=list, max_length=20)
    crl_urls: list[Url] = Field(default_factory=list, max_length=5)
    ocsp_urls: list[Url] = Field(default_factory=list, max_length=5)
    ca_issuers_urls: list[Url] = Field(default_factory=list, max_length=5)
    max_validity_days: int | None = Field(default=None, ge=1, le=40 * 366)

    @field_validator("subject")
    @classmethod
    def _country(cls, subject: dict[str, str]) -> dict[str, str]:
        if "C" in subject and not re.fullmatch(r"[A-Z]{2}", subject["C"]):
            raise ValueError("subject.C must be a two-letter upper-case country code")
        return subject


class _CaProfile(_Certificate):
    """What a CA certificate step can say about the certificates below it."""

    name_constraints: NameConstraints | None = None
    policy_constraints: PolicyConstraints | None = None
    inhibit_any_policy: int | None = Field(default=None, ge=0, le=10)


class KeyStep(_Step):
    type: Literal["key"]
    label: Annotated[str, Field(min_length=1, max_length=64)]
    key_type: KeyType


class RootStep(_CaProfile):
    type: Literal["root"]
    key: Ref
    authority: AuthorityName
    path_length: int | None = Field(default=None, ge=0, le=10)

    @model_validator(mode="after")
    def _no_eku(self) -> RootStep:
        if self.extended_key_usage:
            raise ValueError("a root certificate carries no extended key usage")
        return self


class IntermediateStep(_CaProfile):
    type: Literal["intermediate"]
    key: Ref
    issuer: Ref
    authority: AuthorityName
    path_length: int | None = Field(default=0, ge=0, le=10)


class CrossStep(_CaProfile):
    """A certificate for an existing CA's subject and key, signed by another CA."""

    type: Literal["cross-certificate"]
    subject_authority: Ref
    issuer: Ref
    authority: AuthorityName
    subject: dict[SubjectAttr, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict
    )
    path_length: int | None = Field(default=None, ge=0, le=10)

    @model_validator(mode="after")
    def _subject_is_copied(self) -> CrossStep:
        if self.subject:
            raise ValueError("cross-certificate: the subject is copied from subject_authority")
        return self


class OcspSignerStep(_Certificate):
    type: Literal["ocsp-signer"]
    key: Ref
    issuer: Ref
    authority: AuthorityName


class SignCsrStep(_CaProfile):
    """Sign a subordinate CA's CSR with a CA of this node: the subordinate's key stays in
    the token where it was made (an offline root signing its online issuing CA)."""

    type: Literal["sign-csr"]
    csr: Annotated[str, Field(min_length=1, max_length=1000)]  # a file, or an earlier csr step
    csr_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    issuer: Ref
    authority: AuthorityName
    # Copied from the CSR byte for byte; if given, the CSR's subject must be exactly this.
    subject: dict[SubjectAttr, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict
    )
    path_length: int | None = Field(default=0, ge=0, le=10)


class CsrStep(_Signed):
    type: Literal["csr"]
    key: Ref
    subject: dict[SubjectAttr, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1
    )


class ImportStep(_Step):
    """Bring in a certificate an outside CA signed for a key in our token."""

    type: Literal["import"]
    key: Ref
    authority: AuthorityName
    certificate: Annotated[str, Field(min_length=1, max_length=1000)]
    root: Annotated[str, Field(min_length=1, max_length=1000)]
    chain: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=list, max_length=8
    )
    csr: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    subject: dict[SubjectAttr, Annotated[str, Field(min_length=1, max_length=64)]] | None = None
    # The name the outside root is registered under (default: <authority>-root); give the
    # name relying parties fetch it by, e.g. "root" for /ca/root.crt and /crl/root.crl.
    root_authority: AuthorityName | None = None

    @model_validator(mode="after")
    def _expected_subject(self) -> ImportStep:
        if (self.csr is None) == (self.subject is None):
            raise ValueError("import: give exactly one of 'csr' (the CSR we made) or 'subject'")
        return self


class RevokedEntry(_Strict):
    serial: Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]{1,40}$")]
    reason: RevocationReason = "unspecified"
    revoked_at: datetime | None = None


class CrlStep(_Signed):
    """An offline CRL (for CA certificates) signed by a CA key."""

    type: Literal["crl"]
    issuer: Ref
    next_update_days: int = Field(default=365, ge=1, le=366)
    revoked: list[RevokedEntry] = Field(default_factory=list, max_length=10_000)
    revoke_authorities: list[AuthorityName] = Field(default_factory=list, max_length=100)
    crl_url: Url | None = None


Step = Annotated[
    KeyStep | RootStep | IntermediateStep | CrossStep | OcspSignerStep | CsrStep | SignCsrStep
    | ImportStep | CrlStep,
    Field(discriminator="type"),
]
CERTIFICATE_STEPS = (RootStep, IntermediateStep, CrossStep, OcspSignerStep, SignCsrStep,
                     ImportStep)


class Ceremony(_Strict):
    version: Literal[1]
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    description: Annotated[str, Field(max_length=2000)] = ""
    operators: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=20
    )
    witnesses: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=20
    )
    officers: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")],
        Annotated[str, Field(pattern=r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")],
    ] = Field(default_factory=dict, max_length=32)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _strength_over_lifetime(self) -> Ceremony:
        """SP 800-131A Rev 2: in FIPS mode a 112-bit key (RSA-2048) made by this script is
        refused for a certificate valid past 2030 (the table's limit), here, before any
        PKCS#11 session; the default table has no limit. A certificate's end is estimated
        from its validity as written (``days`` counted from ``not_before`` or now)."""
        key_types = {step.id: step.key_type for step in self.steps if isinstance(step, KeyStep)}
        # A CA step's id -> the key step its key came from (its signatures' strength).
        ca_keys = {step.id: getattr(step, "key", None) for step in self.steps}
        now = datetime.now(UTC)
        for step in self.steps:
            validity = getattr(step, "validity", None)
            if not isinstance(validity, Validity):
                continue
            end = validity.not_after or (validity.not_before or now) + timedelta(
                days=validity.days or 0)
            what = f"the {step.type} certificate of step {step.id}"
            issuer_key = ca_keys.get(getattr(step, "issuer", None) or "")
            for ref, whose in ((getattr(step, "key", None), what),
                               (issuer_key, f"the issuer's signature on {what}")):
                if ref not in key_types:
                    continue
                try:
                    algorithms.check_strength(algorithms.KeySpec.parse(key_types[ref]), end,
                                              whose)
                except algorithms.AlgorithmRefused as exc:
                    raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _references(self) -> Ceremony:
        seen: dict[str, str] = {}
        authorities: set[str] = set()
        all_ids = {step.id for step in self.steps}
        for step in self.steps:
            if step.id in seen:
                raise ValueError(f"step id {step.id!r} is used twice")
            if step.quorum is not None:
                unknown = [o for o in step.quorum.officers if o not in self.officers]
                if unknown:
                    raise ValueError(f"step {step.id}: quorum names officers with no verifier: "
                                     f"{', '.join(unknown)}")
            for field in ("key", "issuer", "subject_authority", "csr"):
                ref = getattr(step, field, None)
                if ref is not None and ref in seen:
                    _check_ref_kind(step.id, field, ref, seen[ref])
                elif ref is not None and ref in all_ids:
                    # Not "something that already exists": the script means its own step,
                    # which has not run yet when this one does.
                    raise ValueError(f"step {step.id}: {field} {ref!r} names a step that does "
                                     "not come before it (steps run in order)")
            name = getattr(step, "authority", None)
            if name is not None:
                if name in authorities:
                    raise ValueError(f"authority name {name!r} is registered twice")
                authorities.add(name)
            seen[step.id] = step.type
        return self


_KEY_MAKERS = {"key"}
_CA_MAKERS = {"root", "intermediate", "cross-certificate", "import", "sign-csr"}


def _check_ref_kind(step_id: str, field: str, ref: str, ref_type: str) -> None:
    if field == "csr" and ref_type != "csr":
        raise ValueError(f"step {step_id}: csr {ref!r} is a {ref_type} step, not a csr step")
    if field == "key" and ref_type not in _KEY_MAKERS:
        raise ValueError(f"step {step_id}: key {ref!r} is a {ref_type} step, not a key step")
    if field in ("issuer", "subject_authority") and ref_type not in _CA_MAKERS:
        raise ValueError(f"step {step_id}: {field} {ref!r} is a {ref_type} step, not a CA")
