"""The nodes of a cluster (several appliance nodes on one database): heartbeats and what
they tell an operator (``appliance cluster status``) and a schema upgrade (refused while
another node of another version runs)."""
