"""OCSP: the pre-signer (batch, on issue, on revoke) and the responder, which only looks
pre-signed bytes up (RFC 6960, RFC 5019)."""
