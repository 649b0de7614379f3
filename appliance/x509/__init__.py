"""The X.509 room: vocabulary and checks every part of the core shares (issuance, ceremonies).

Nothing here touches the token or the database: these are pure functions over
certificates, so the issuance pipeline and the ceremony runner can both call them before
a CA key signs anything.
"""
