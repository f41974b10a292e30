"""Load-generator clients, one module per kind of load; each runs in a forked process."""
