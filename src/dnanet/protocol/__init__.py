"""The pure protocol core: no sockets, clocks, environment variables or disk."""
