"""Reference programs built on jobforge; ``python -m jobforge.examples.library_import DIR``."""
