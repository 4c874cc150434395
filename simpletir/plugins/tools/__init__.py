"""Built-in tools plugins (registered through the `simpletir` entry-point group)."""
