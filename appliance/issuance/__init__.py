"""The one issuance pipeline every certificate goes through."""
