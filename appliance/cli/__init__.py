"""The ``appliance`` command: one click group per module."""
