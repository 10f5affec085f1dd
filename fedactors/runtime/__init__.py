"""The runtime: the round loops (coordinator), samplers and the virtual clock, the collection phase, the
host pool and client hosts, and Ray start-up (experiment)."""
