"""`kubectl engram`: a MemoryCluster's status, switchover, snapshots and events from a terminal."""
