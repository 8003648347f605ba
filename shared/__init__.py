"""rankstream's library: settings, wire schemas, models, store, batching. No process starts here."""
