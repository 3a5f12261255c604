"""The one loop and what it stands on: sites, cells, batches, passes, runs, the engine, metrics, memory, remote."""
