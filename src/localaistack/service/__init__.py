"""`las serve`: the runtime's operations over HTTP (the API, events, metrics)."""
