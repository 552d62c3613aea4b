"""Signaling: the wire protocol (one definition of every message), access tokens, and the client."""
