"""The Engram Kubernetes operator: MemoryCluster and MultiRegionCluster custom resources reconciled
by kopf handlers."""

GROUP = "engram.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MemoryCluster"
PLURAL = "memoryclusters"
MULTIREGION_KIND = "MultiRegionCluster"
MULTIREGION_PLURAL = "multiregionclusters"
