"""The signaling server: HTTP app, call rules (hub), and the Store behind them.

Imports the wire protocol and tokens from ``callctl.signaling``; never the engine or media.
"""
