"""Extensions and names as the core builds them, for CA certificates and leaves alike.

A ceremony's CA profile and a leaf template speak the same vocabulary
(``appliance.x509.vocabulary``); these helpers turn it into ``cryptography``
objects in one way, so a leaf and its issuer can never disagree on what a name means.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)

from appliance.x509.algorithms import PublicKey, SubjectPublicKey
from appliance.x509.vocabulary import KeyUsageName, NameConstraints

ATTR_OIDS = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME, "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT, "emailAddress": NameOID.EMAIL_ADDRESS,
}
EKU_OIDS = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}

def name(subject: Mapping[Any, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(ATTR_OIDS[k], v) for k, v in subject.items()])


def key_usage(names: Iterable[KeyUsageName]) -> x509.KeyUsage:
    chosen = set(names)
    return x509.KeyUsage(
        digital_signature="digital_signature" in chosen,
        content_commitment="content_commitment" in chosen,
        key_encipherment="key_encipherment" in chosen,
        data_encipherment="data_encipherment" in chosen,
        key_agreement="key_agreement" in chosen,
        key_cert_sign="key_cert_sign" in chosen,
        crl_sign="crl_sign" in chosen,
        encipher_only=False, decipher_only=False,
    )


def name_constraints(nc: NameConstraints) -> x509.NameConstraints:
    def names(dns: list[str], ip: list[str], email: list[str],
              uri: list[str]) -> list[x509.GeneralName] | None:
        out: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        out += [x509.IPAddress(ipaddress.ip_network(i)) for i in ip]
        out += [x509.RFC822Name(e) for e in email]
        out += [x509.UniformResourceIdentifier(u) for u in uri]
        return out or None

    return x509.NameConstraints(
        permitted_subtrees=names(nc.permitted_dns, nc.permitted_ip, nc.permitted_email,
                                 nc.permitted_uri),
        excluded_subtrees=names(nc.excluded_dns, nc.excluded_ip, nc.excluded_email,
                                nc.excluded_uri),
    )


def add_common_extensions(builder: x509.CertificateBuilder, *, subject_key: SubjectPublicKey,
                          issuer_key: PublicKey | None, policies: list[str],
                          crl_urls: list[str], ocsp_urls: list[str],
                          ca_issuers_urls: list[str]) -> x509.CertificateBuilder:
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    if policies:
        builder = builder.add_extension(x509.CertificatePolicies(
            [x509.PolicyInformation(ObjectIdentifier(p), None) for p in policies]), critical=False)
    if crl_urls:
        builder = builder.add_extension(x509.CRLDistributionPoints([
            x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None)
            for u in crl_urls]), critical=False)
    access = [x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                     x509.UniformResourceIdentifier(u)) for u in ocsp_urls]
    access += [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                      x509.UniformResourceIdentifier(u)) for u in ca_issuers_urls]
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    return builder


def eku(values: list[str]) -> x509.ExtendedKeyUsage:
    return x509.ExtendedKeyUsage(
        [EKU_OIDS[v] if v in EKU_OIDS else ObjectIdentifier(v) for v in values]
    )
