"""Everything that touches the PKCS#11 token: profiles, session pool, keys, signing, self-tests."""
