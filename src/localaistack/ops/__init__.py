"""The runtime's operations, one interface (``api.Operations``) with two implementations:
in process (``local``: control + runtime, as the CLI has always run them) and over HTTP
(``remote``: a client of `las serve`). The CLI and the service both go through it."""
