"""Built-in filters plugins (registered through the `simpletir` entry-point group)."""
