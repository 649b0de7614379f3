"""pkilint's leaf lint with memoised segments: the same findings as ``lint_certificate(der,
"leaf")``, in the same order, for less CPU when certificates share their fixed parts.

Why: pkilint costs ~5 ms of the ~15 ms an issuance costs in-process (issue 16), and most of
it goes to parts that are byte-identical in every certificate of one (template, authority,
key type) shape: the issuer name, the CRL distribution points, AIA and policy URIs (pkilint
validates each URI with the ``validators`` package), basicConstraints, AKI, EKU. Nothing is
dropped: every certificate is still decoded by pkilint and every validator still applies to
it; what is reused is the *result* of running a validator tree over a subtree that was seen
before, and only where that result provably cannot differ.

How pkilint runs (pkilint 0.13, ``validation.ValidatorContainer``): a container walks the
decoded tree depth first; at every node it asks each of its validators ``match(node)`` and
runs the matching ones; nested containers walk their own subtree the same way. This module
walks the same tree in the same order with the same validators (``ShapeCache._walk`` mirrors
``ValidatorContainer._validate_rec`` and ``Validator.validate_wrapper``), so findings come
out in the same order. The one difference: when a container's walk reaches a *segment root*
(the issuer name, or one whole Extension), the findings the container produces for that
subtree (a contiguous run of its output) may come from a bounded LRU instead of being
computed. The memo key is (container, node path, the DER of the subtree, ``is_ca``).

When a run is memoised (the proof obligation, checked per run, not assumed):

- every ``match`` the walk can evaluate depends only on the node's path, its subtree and
  ``document.is_ca``: the validators' classes and predicates are checked against an audited
  list (``_AUDITED_MATCH`` / ``_AUDITED_PREDICATES``) when the validator tree is first seen;
  a container with an unaudited direct validator is run by pkilint itself, and a segment
  that reaches one is not memoised;
- every validator that actually ran inside the segment is in ``_SEGMENT_LOCAL``: classes
  whose ``validate`` reads only the node's own subtree, the *types* of its ancestors (fixed
  by the path: the decoding schema is) and ``document.is_ca``. Each was read in pkilint's
  source; anything else (a validator that navigates from the root, reads another
  extension, the subject, the SPKI or another document property) makes the segment
  unmemoisable and it runs on every certificate;
- no validator raised (an unhandled exception is logged by pkilint; a replay would not be).

So the document-level and cross-field validators all run per certificate: those matched at
the root, TBSCertificate or Extensions nodes (presence of SKI/AKI/KU, unique extensions,
version, signature algorithm match, unique IDs) never sit inside a segment, and the
cross-field ones that match inside an extension (SAN criticality vs an empty subject,
KU vs the SPKI's key type, SKI vs the SPKI, EKU timestamping criticality, SCT vs poison,
QC statements) keep their segment from being memoised. ``is_ca`` is in the key because
``KeyUsageValidator``, the EE presence checks and two ``match`` predicates read it.

The decoding pass is pkilint's container too and is walked the same way, with one more
rule: its findings for a memoised extension (they depend on the extension's bytes alone,
and only the audited decoders of ``_LOCAL_DECODERS`` may have run) are replayed, and its
effect, the decoded subtree under ``extnValue``, is deferred to the first access of
``extnValue.children`` (``_defer_decoding``), where pkilint's own walk of the decoding
container over that extension produces it. Every validator that looks into the value
(``document.is_ca``, a cross-field check, a segment that is not memoised) therefore sees
the tree pkilint would have built; an extension nobody looks into is never decoded. The
issuer and everything outside the extensions are decoded as usual.

The DER of a segment comes from a strict definite-length TLV walk of the input; if it finds
anything unexpected (or a count that disagrees with pkilint's tree), nothing is memoised
for that certificate and the plain walk gives pkilint's answer. subjectAltName and
subjectKeyIdentifier are never segment roots (they differ per request by construction), and
the audit holds for one pkilint release (``AUDITED_PKILINT``): under another one nothing is
memoised.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from appliance.lint.pkilint_gate import (
    Finding,
    _appliance_findings,
    _cached,
    _checked_der,
    _findings,
    _load,
    _pkix_certificate_validator,
)

DEFAULT_MAX_ENTRIES: Final = 4096
"""Memoised segments kept: a shape has ~10 (two containers x the fixed extensions + issuer),
so this holds hundreds of (template, authority, key type) shapes; each entry is a few
findings and the key bytes (an extension rarely exceeds a few hundred bytes)."""

AUDITED_PKILINT: Final = "0.13.3"
"""The pkilint release whose validators were read for ``_SEGMENT_LOCAL``, ``_LOCAL_DECODERS``
and the audited matches. Under any other release nothing is memoised (every call is
``lint_certificate``'s plain walk) until the audit is redone: a validator that starts to
read another part of the certificate must not be replayed on a stale classification."""

MAX_SEGMENT_BYTES: Final = 8192
"""A larger subtree is linted each time rather than kept as a key."""

# The DER of the extnID of subjectAltName (2.5.29.17) and subjectKeyIdentifier (2.5.29.14):
# per request by construction (the request's names, the request's key), so memoising them
# would only churn the LRU. Purely a saving: a memoised one would simply never be hit.
_PER_REQUEST_EXTN_IDS: Final = (b"\x06\x03\x55\x1d\x11", b"\x06\x03\x55\x1d\x0e")

_TBS_PATH: Final = "certificate.tbsCertificate"
_ISSUER_PATH: Final = f"{_TBS_PATH}.issuer"
_EXTENSIONS_PATH: Final = f"{_TBS_PATH}.extensions"

# Validators whose ``validate`` reads only the matched node's subtree, the types of its
# ancestors and ``document.is_ca`` (checked in pkilint 0.13's source; module, class name).
_SEGMENT_LOCAL: Final = frozenset({
    # pkix/certificate/certificate_extension.py
    ("pkilint.pkix.certificate.certificate_extension", "BasicConstraintsValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "CertificatePolicyQualifierValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "CertificatePoliciesUserNoticeValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "SubjectKeyIdentifierCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "KeyUsageCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "KeyUsageValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "DuplicatePolicyValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "CrlDpCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "NameConstraintsCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "NameConstraintsValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "NameConstraintsGeneralSubtreeValidator"),
    ("pkilint.pkix.certificate.certificate_extension",
     "AuthorityInformationAccessCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension",
     "SubjectInformationAccessCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension",
     "SubjectDirectoryAttributesCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "SmimeCapabilitiesCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "CtPrecertPoisonCriticalityValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "PolicyConstraintsPresenceValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "PolicyMappingsPresenceValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "InhibitAnyPolicyPresenceValidator"),
    ("pkilint.pkix.certificate.certificate_extension", "IssuerAlternativeNameCriticalityValidator"),
    # pkix/extension.py
    ("pkilint.pkix.extension", "AuthorityKeyIdentifierValidator"),
    ("pkilint.pkix.extension", "AuthorityKeyIdentifierCriticalityValidator"),
    ("pkilint.pkix.extension", "DistributionPointValidator"),
    # pkix/certificate/certificate_transparency.py (reads the list its own decoder attached)
    ("pkilint.pkix.certificate.certificate_transparency", "SctListElementCountValidator"),
    # pkix/general_name.py (the name-constraints test reads ancestors' types only)
    ("pkilint.pkix.general_name", "UriSyntaxValidator"),
    ("pkilint.pkix.general_name", "MailboxAddressSyntaxValidator"),
    ("pkilint.pkix.general_name", "GeneralNameUriSyntaxValidator"),
    ("pkilint.pkix.general_name", "GeneralNameDnsNameSyntaxValidator"),
    ("pkilint.pkix.general_name", "GeneralNameIpAddressSyntaxValidator"),
    ("pkilint.pkix.general_name", "GeneralNameMailboxAddressSyntaxValidator"),
    ("pkilint.pkix.general_name", "SmtpUTF8MailboxValidator"),
    ("pkilint.pkix.general_name", "GeneralNameDnsNameDomainNameLengthValidator"),
    ("pkilint.pkix.general_name", "GeneralNameUriDomainNameLengthValidator"),
    ("pkilint.pkix.general_name", "GeneralNameRfc822NameDomainNameLengthValidator"),
    ("pkilint.pkix.general_name", "SmtpUTF8MailboxDomainNameLengthValidator"),
    # pkix/name.py
    ("pkilint.pkix.name", "RDNContainsUniqueTypesValidator"),
    ("pkilint.pkix.name", "EmptyNameValidator"),
    # pkix/__init__.py, pkix/time.py
    ("pkilint.pkix", "CertificateSerialNumberValidator"),
    ("pkilint.pkix.time", "UtcTimeCorrectSyntaxValidator"),
    ("pkilint.pkix.time", "GeneralizedTimeCorrectSyntaxValidator"),
    ("pkilint.pkix.time", "TimeCorrectEncodingValidator"),
})

# Decoders whose effect and findings depend only on their own node's subtree: they decode
# a value found under the matched node (ValueDecoder's type_path/value_path are relative) and
# append it there. (SPKI decoders are not here: SubjectPublicKeyDecoder overrides decoding.)
_LOCAL_DECODERS: Final = frozenset({
    ("pkilint.pkix.extension", "ExtensionsDecodingValidator"),
    ("pkilint.pkix.name", "NameDecodingValidator"),
    ("pkilint.validation", "DecodingValidator"),
    ("pkilint.pkix.certificate.certificate_transparency", "SctListExtensionDecodingValidator"),
})

# ``match`` implementations that read only the node's path, pdu type, own subtree (extnID)
# and, for the EKU criticality validator, ``document.is_ca`` (qualified names).
_AUDITED_MATCH: Final = frozenset({
    "NodeVisitor.match",
    "TypeMatchingValidator.match",
    "ExtensionCriticalityValidator.match",
    "ExtendedKeyUsageCriticalityValidator.match",
})

# ``predicate=`` lambdas: the GeneralName type test (node name, parent's type) and two that
# read ``document.is_ca``.
_AUDITED_PREDICATES: Final = frozenset({
    "create_generalname_type_predicate.<locals>.<lambda>",
    "KeyUsagePresenceValidator.__init__.<locals>.<lambda>",
    "CaPrehashPublicKeyValidator.__init__.<locals>.<lambda>",
})

_CODE_UNHANDLED: Final = "base.unhandled_exception"

# pkilint's logger for a validator that raised, so a failure logs as it does under pkilint.
_pkilint_log = logging.getLogger("pkilint.validation")


@dataclass
class CacheInfo:
    """Counters of one cache (for tests and the benchmark)."""

    hits: int
    misses: int
    entries: int
    max_entries: int


class _State:
    """Per-call walk state: ``taint`` counts what makes the current segments unmemoisable."""

    __slots__ = ("_doc", "_is_ca", "segments", "taint")

    def __init__(self, segments: dict[str, bytes], doc: Any) -> None:
        self.taint = 0
        self.segments = segments
        self._doc = doc
        self._is_ca: bool | None = None

    @property
    def is_ca(self) -> bool:
        """``document.is_ca``, read at the first segment outside the decoding pass (which is
        over by then: it is the root's first validator). The property is cached on the
        document and decodes basicConstraints as the pass would (a deferred one on first
        access, see ``_defer_decoding``), so reading it changes nothing a validator sees."""
        if self._is_ca is None:
            self._is_ca = bool(self._doc.is_ca)
        return self._is_ca


class ShapeCache:
    """A bounded, thread-safe memo of pkilint segment results (see the module docstring).

    One instance per process normally (``lint_leaf``); tests make their own to see the
    counters and the bound.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, str, bytes, bool | None], tuple[Finding, ...]] = (
            OrderedDict())
        self._hits = 0
        self._misses = 0
        # Per validator object (they live as long as the process): walkable container?
        # segment-local? Computed once per object, read without the lock (a race computes
        # the same answer twice).
        self._walkable: dict[int, bool] = {}
        self._decoding: dict[int, bool] = {}
        self._local: dict[int, bool] = {}
        self._container_ids: dict[int, int] = {}
        self._kept: list[Any] = []  # keeps the validators behind those ids alive

    # --- the cache ---------------------------------------------------------------------

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._entries), self._max)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hits = self._misses = 0

    def _get(self, key: tuple[int, str, bytes, bool | None]) -> tuple[Finding, ...] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return found

    def _put(self, key: tuple[int, str, bytes, bool | None], value: tuple[Finding, ...]) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    # --- linting -----------------------------------------------------------------------

    def lint_leaf(self, der: bytes) -> list[Finding]:
        """``lint_certificate(der, "leaf")``, with the fixed parts' results memoised."""
        data = _checked_der(der)
        doc, fatal = _load("certificate", data, "certificate")
        if doc is None:
            return fatal
        validator = _cached(("pkix-certificate",), _pkix_certificate_validator)
        segments = _segments(data, doc) if _audited_release() else {}
        if not segments or not self._is_walkable(validator):
            # Nothing to memoise: exactly lint_certificate's path.
            return _findings(validator.validate(doc.root)) + _appliance_findings(doc, "leaf")
        out: list[Finding] = []
        self._walk(validator, doc.root, out, _State(segments, doc))
        return out + _appliance_findings(doc, "leaf")

    def _is_walkable(self, v: Any) -> bool:
        """A plain ValidatorContainer whose direct validators all have audited matches."""
        known = self._walkable.get(id(v))
        if known is not None:
            return known
        from pkilint.validation import Validator, ValidatorContainer

        cls = type(v)
        ok = (
            isinstance(v, ValidatorContainer)
            and cls.validate is ValidatorContainer.validate
            and cls._validate_rec is ValidatorContainer._validate_rec
            and cls.validate_wrapper is Validator.validate_wrapper
            and _match_audited(v)
            and all(_match_audited(c) for c in v.validators)
        )
        with self._lock:
            # Published last: a reader that sees it (without the lock) finds the others.
            self._kept.append(v)
            self._decoding[id(v)] = ok and _decodes(v)
            if ok:
                self._container_ids.setdefault(id(v), len(self._container_ids))
            self._walkable[id(v)] = ok
        return ok

    def _is_local(self, v: Any) -> bool:
        known = self._local.get(id(v))
        if known is not None:
            return known
        cls = type(v)
        name = (cls.__module__, cls.__name__)
        ok = _match_audited(v) and (name in _SEGMENT_LOCAL or (
            name in _LOCAL_DECODERS and _plain_value_decoder(getattr(v, "decode_func", None))))
        with self._lock:
            self._kept.append(v)
            self._local[id(v)] = ok
        return ok

    def _walk(self, container: Any, node: Any, out: list[Finding], state: _State) -> None:
        """``ValidatorContainer._validate_rec`` for a walkable container, memoising segments."""
        key: tuple[int, str, bytes, bool | None] | None = None
        raw = state.segments.get(node.path)
        decoding = self._decoding[id(container)]
        if raw is not None and not (decoding and not _undecoded_extension(node)):
            # A decoder's result depends on the bytes alone (no is_ca: reading it here
            # would decode basicConstraints ahead of the pass).
            key = (self._container_ids[id(container)], node.path, raw,
                   None if decoding else state.is_ca)
            hit = self._get(key)
            if hit is not None:
                out.extend(hit)
                if decoding:
                    _defer_decoding(container, node)
                return
        start, taint = len(out), state.taint

        for v in container.validators:
            if not v.match(node):
                continue
            if self._is_walkable(v):
                self._nested(v, node, out, state)
                continue
            if hasattr(v, "validators"):
                state.taint += 1  # a container pkilint runs itself: its matches are unaudited
            result = v.validate_wrapper(node)
            results = result if isinstance(result, list) else [result]
            for r in results:
                if not self._is_local(r.validator):
                    state.taint += 1
            found = _findings(results)
            if any(f.code == _CODE_UNHANDLED for f in found):
                state.taint += 1
            out.extend(found)

        for child in node.children.values():
            self._walk(container, child, out, state)

        if key is not None and state.taint == taint:
            self._put(key, tuple(out[start:]))

    def _nested(self, container: Any, node: Any, out: list[Finding], state: _State) -> None:
        """A nested container as ``Validator.validate_wrapper`` runs it: an exception inside
        its walk replaces all its results with one FATAL finding at ``node``."""
        sub: list[Finding] = []
        try:
            self._walk(container, node, sub, state)
        except Exception as e:  # as pkilint's validate_wrapper
            _pkilint_log.exception(
                "Unhandled exception occurred when executing validator %s on node %s",
                container.name, node.path)
            state.taint += 1
            sub = [Finding(_CODE_UNHANDLED, "FATAL", str(e), str(node.path))]
        out.extend(sub)


_release_ok: bool | None = None


def _audited_release() -> bool:
    global _release_ok
    if _release_ok is None:
        from importlib import metadata

        try:
            _release_ok = metadata.version("pkilint") == AUDITED_PKILINT
        except metadata.PackageNotFoundError:
            _release_ok = False
    return _release_ok


def _plain_value_decoder(decode_func: Any) -> bool:
    from pkilint.document import ValueDecoder

    # SctListExtensionDecodingValidator has no decode_func: it decodes its own node's octets.
    return decode_func is None or type(decode_func) is ValueDecoder


_lazy_class: Any = None


def _lazy_node_class() -> Any:
    """A PDUNode whose ``children`` run a deferred decoding on first access."""
    global _lazy_class
    if _lazy_class is None:
        from pkilint.document import PDUNode

        class _DeferredDecodingNode(PDUNode):  # type: ignore[misc]
            @property
            def children(self) -> Any:
                pending = self.__dict__.pop("_shape_cache_pending", None)
                if pending is not None:
                    pending()
                return self.__dict__["children"]

            @children.setter
            def children(self, value: Any) -> None:
                self.__dict__["children"] = value

        _lazy_class = _DeferredDecodingNode
    return _lazy_class


def _undecoded_extension(node: Any) -> bool:
    """An Extension whose value nobody has decoded yet: the one case where the decoding
    pass's work on it can be replayed (and deferred). Anything else (the issuer, an
    extension some property already decoded) is decoded by the pass as usual."""
    value = node.children.get("extnValue") if "extnID" in node.children else None
    return value is not None and not value.__dict__.get("children")


def _defer_decoding(container: Any, extension: Any) -> None:
    """Decode an Extension's value when someone first looks into it, not now.

    The decoding pass's findings for this extension came from the memo (they depend on its
    bytes alone), and its one effect, the decoded subtree under ``extnValue``, is produced
    on the first access to ``extnValue.children`` (any path to the subtree goes through
    it): by pkilint's own ``_validate_rec`` of the decoding container over the extension,
    exactly what the pass would have run. A reader (``document.is_ca``, a cross-field
    validator, a segment that is not memoised) therefore sees the same tree; when every
    container's segment for the extension is memoised, nobody reads it and the decoding
    is saved.
    """
    from pkilint.validation import ValidatorContainer

    value = extension.children["extnValue"]

    def decode() -> None:
        ValidatorContainer._validate_rec(container, extension, [])

    value.__class__ = _lazy_node_class()
    value.__dict__["_shape_cache_pending"] = decode


def _decodes(container: Any) -> bool:
    """Whether a container's own validators include a decoder: those change the tree, so
    such a container (pkilint's decoding pass) runs as pkilint runs it, never replayed."""
    from pkilint.validation import DecodingValidator

    for v in container.validators:
        if isinstance(v, DecodingValidator) or type(v).__name__.endswith("DecodingValidator"):
            return True
    return False


def _match_audited(v: Any) -> bool:
    match = getattr(type(v), "match", None)
    if getattr(match, "__qualname__", None) not in _AUDITED_MATCH:
        return False
    # TypeMatchingValidator.match navigates type_path from the node: audited only while
    # that stays inside the node ("extnID"), not from the root (":") or a parent ("^").
    type_path = getattr(v, "type_path", None)
    if type_path is not None and (":" in type_path or "^" in type_path):
        return False
    predicate = getattr(v, "_predicate", None)
    return predicate is None or getattr(predicate, "__qualname__", None) in _AUDITED_PREDICATES


# --- where the segments are (a strict TLV walk of the input) --------------------------------


class _NotDer(ValueError):
    pass


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag byte, content start, element end) of the element at ``pos``; definite lengths
    and single-byte tags only (all a certificate's TBS needs down to its extensions)."""
    if pos + 2 > end:
        raise _NotDer("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _NotDer("multi-byte tag")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise _NotDer("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise _NotDer("overlong")
    return tag, pos, pos + length


def _segments(data: bytes, doc: Any) -> dict[str, bytes]:
    """Node path -> the DER of that subtree, for the issuer and each extension; empty if the
    input does not split as pkilint's tree does (then nothing is memoised)."""
    try:
        tag, content, end = _tlv(data, 0, len(data))
        if tag != 0x30 or end != len(data):
            return {}
        tag, pos, tbs_end = _tlv(data, content, end)
        if tag != 0x30:
            return {}
        fields: list[tuple[int, int, int]] = []
        while pos < tbs_end:
            t, c, e = _tlv(data, pos, tbs_end)
            fields.append((t, pos, e))
            pos = e
        if fields and fields[0][0] == 0xA0:  # [0] version
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
        if len(fields) < 6 or [f[0] for f in fields[:6]] != [0x02] + [0x30] * 5:
            return {}
        segments: dict[str, bytes] = {}
        _, i_start, i_end = fields[2]
        if i_end - i_start <= MAX_SEGMENT_BYTES:
            segments[_ISSUER_PATH] = data[i_start:i_end]
        ext_field = [f for f in fields[6:] if f[0] == 0xA3]
        if ext_field:
            _, e_start, e_end = ext_field[0]
            _, seq_c, seq_end = _tlv(data, e_start, e_end)
            _, inner_c, inner_end = _tlv(data, seq_c, seq_end)
            index, pos = 0, inner_c
            while pos < inner_end:
                t, c, e = _tlv(data, pos, inner_end)
                if t != 0x30:
                    return {}
                per_request = data[c:c + 5] in _PER_REQUEST_EXTN_IDS
                if e - pos <= MAX_SEGMENT_BYTES and not per_request:
                    segments[f"{_EXTENSIONS_PATH}.{index}"] = data[pos:e]
                index, pos = index + 1, e
            tbs = doc.root.children["tbsCertificate"]
            extensions = tbs.children.get("extensions")
            if extensions is None or len(extensions.children) != index:
                return {}
        return segments
    except (_NotDer, KeyError):
        return {}


_default = ShapeCache()


def lint_leaf(der: bytes) -> list[Finding]:
    """The same findings as ``lint_certificate(der, "leaf")``, cheaper for repeat shapes.

    The pipeline's gate before the token signs: see the module docstring for what is
    memoised and why the result cannot differ.
    """
    return _default.lint_leaf(der)


def cache_info() -> CacheInfo:
    """The process-wide cache's counters."""
    return _default.info()
