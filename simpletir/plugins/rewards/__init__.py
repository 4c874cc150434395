"""Built-in rewards plugins (registered through the `simpletir` entry-point group)."""
