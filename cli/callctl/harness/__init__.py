"""What the tests, the benches and ``callctl demo`` need to run callctl from the outside.

One module per concept:

- ``child``: a child process and the NDJSON events on its stdout;
- ``server``: ``callctl server`` as a child on a free loopback port, its secret, tokens;
- ``procfs``: CPU time and memory of a pid, machine CPU ticks, from /proc;
- ``stats``: percentiles and the summary a bench reports;
- ``looplag``: how late a busy event loop wakes a sleeper;
- ``machine``: what a bench report says about the machine and the checkout;
- ``bench``: the frame of a bench script (log line, exit status, signals, hard limit);
- ``relay``: a UDP relay on loopback that drops and delays packets.

The harness drives callctl as a user would, so it imports only
``callctl.signaling`` (tokens, the client) besides the standard library, and
that lazily; never the engine, the media or the server package.
"""
