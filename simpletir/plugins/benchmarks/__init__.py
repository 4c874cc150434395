"""Built-in benchmarks plugins (registered through the `simpletir` entry-point group)."""
