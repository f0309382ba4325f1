"""The admin console: jobs, manifests, diagnostics, partners, catalog and audit in a browser,
served by the daemon when ``[console] address`` is set (``server.ConsoleServer``)."""
