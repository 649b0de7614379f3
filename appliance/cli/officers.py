"""The ``--officer NAME=SECRET_FILE`` option every crypto-officer command shares (kept
apart from ``cli/fips.py`` so ``hsm`` and ``ceremony`` do not import the report's code)."""

from __future__ import annotations

import click

officer_option = click.option(
    "--officer", "officer_specs", multiple=True, metavar="NAME=SECRET_FILE",
    help="A crypto officer approving this (repeat for each; the file holds the secret, "
         "mode 0600). Default: $APPLIANCE_OFFICERS. Needed in FIPS mode only.")

operator_option = click.option(
    "--operator", "operator_spec", default=None, metavar="NAME=SECRET_FILE",
    help="The operator doing this (the file holds the secret, mode 0600). Default: "
         "$APPLIANCE_OPERATOR. Needed in FIPS mode only, where the officer's registered "
         "role must be operator (a crypto officer is not an operator: separation of duties).")
