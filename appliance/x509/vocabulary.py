"""The X.509 words the whole core shares: OIDs, URLs, key usages, subject attributes.

Ceremony scripts and certificate templates are both checked against these types, so
a name means the same thing in a CA profile as in a leaf template.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Oid = Annotated[str, Field(pattern=r"^[0-2](\.(0|[1-9][0-9]*)){1,20}$")]
# A host with a dot (or an IP literal): relying parties and pkilint reject one-label hosts.
Url = Annotated[str, Field(
    pattern=r"^https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?(/\S{0,500})?$"
)]
KeyUsageName = Literal[
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign",
]
EkuName = Literal[
    "server_auth", "client_auth", "code_signing", "email_protection", "time_stamping",
    "ocsp_signing",
]
SubjectAttr = Literal["C", "ST", "L", "O", "OU", "CN", "serialNumber", "DC", "emailAddress"]
RevocationReason = Literal[
    "unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
    "cessationOfOperation", "privilegeWithdrawn", "aACompromise",
]


class NameConstraints(BaseModel):
    """RFC 5280 §4.2.1.10 subtrees as a CA profile (ceremony step or template) names them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    permitted_dns: list[str] = Field(default_factory=list, max_length=100)
    excluded_dns: list[str] = Field(default_factory=list, max_length=100)
    permitted_ip: list[str] = Field(default_factory=list, max_length=100)
    excluded_ip: list[str] = Field(default_factory=list, max_length=100)
    permitted_email: list[str] = Field(default_factory=list, max_length=100)
    excluded_email: list[str] = Field(default_factory=list, max_length=100)
    permitted_uri: list[str] = Field(default_factory=list, max_length=100)
    excluded_uri: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("permitted_ip", "excluded_ip")
    @classmethod
    def _cidr(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=True)
        return values

    @field_validator("permitted_dns", "excluded_dns", "permitted_uri", "excluded_uri")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        for v in values:
            if not re.fullmatch(r"\.?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}", v):
                raise ValueError(f"{v!r} is not a lowercase DNS name")
        return values

    @model_validator(mode="after")
    def _not_empty(self) -> NameConstraints:
        if not any(getattr(self, f) for f in type(self).model_fields):
            raise ValueError("name_constraints: give at least one permitted or excluded name")
        return self
