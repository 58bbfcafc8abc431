"""`guard serve --quarantine` options and the `guard quarantine list|export` commands (docs/quarantine.md)."""
