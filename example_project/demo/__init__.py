"""The example project's own app: demo wiring and the ``demo`` command."""
