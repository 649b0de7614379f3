"""The admin layer: audited operator actions (init, provisioners, policies, templates,
inventory, EAB keys, certificates, retention) that the CLI calls, and later an admin API
and the console.

It sits above every protocol and core room; nothing below it (acme, issuance, ocsp,
revocation, ceremony, templates, policy, hsm, store, audit, ca, x509) imports it. The CA
registry it used to hold lives in ``appliance.ca``.
"""
