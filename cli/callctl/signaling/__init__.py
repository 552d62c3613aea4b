"""Signaling: the wire protocol, the server (app + store) and the client."""
