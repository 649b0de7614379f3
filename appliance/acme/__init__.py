"""The ACME server (RFC 8555) with External Account Binding, per-account name policy and ARI."""
