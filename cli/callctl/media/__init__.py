"""Media: audio sources and sinks behind one registry, and the aiortc glue."""
