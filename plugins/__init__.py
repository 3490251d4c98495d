"""Built-in plugins. Each subpackage registers its plugins by explicit import."""
