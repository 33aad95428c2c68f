"""annex-client: the researcher's command for Annex."""

__version__ = "0.1.0"
