"""The CA registry: which authorities this node has, their certificates, and their keys.

Issuance, OCSP, revocation, ceremonies and ACME all ask it which CA signs and with
which token key; it sits below them so none of them reaches up into the admin layer.
"""
