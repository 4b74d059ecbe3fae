"""The local platform: an Engram cluster as plain processes under a background supervisor.

`cluster.py` is the Python API (what `engram local ...` calls); `supervisor.py` is the
background process that keeps the journal servers and nodes running and relays the endpoint.
"""
