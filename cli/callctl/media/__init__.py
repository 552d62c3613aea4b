"""Media: sources and sinks behind one registry, the call's peer connection, and the aiortc adjustments."""
