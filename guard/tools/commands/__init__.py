"""The `guard` command's subcommands, one module each: `add(commands)` registers its parser and
the function that runs it (guard.tools.cli lists them). Parsing only at import: each command's body
imports what it needs when it runs, so `guard --help` stays quick and light."""
