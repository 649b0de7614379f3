"""The signing appliance: a certificate authority whose CA keys never leave a PKCS#11 token."""

__version__ = "0.1.0"
