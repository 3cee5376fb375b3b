"""What every daemon shares: the HTTP app and client, the SQLite store, metrics, logging."""
