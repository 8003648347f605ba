"""rankstream's processes: thin FastStream workers and the `rankstream` command."""
