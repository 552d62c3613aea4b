"""callctl: 1:1 audio and video calls from the command line."""

__version__ = "0.1.0"
