"""Model-zoo recipes and the command that builds them: ``python -m datasets build NAME``."""
