"""One module per subcommand: parse options, build the engine, render."""
