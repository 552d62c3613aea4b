"""Terminal output: live view, plain lines, NDJSON events."""
