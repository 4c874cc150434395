"""Built-in plugins. Each registers through the same entry points a third party uses."""
