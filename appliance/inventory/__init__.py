"""The inventory: hosts, services, people and devices, and the names that belong to them."""
