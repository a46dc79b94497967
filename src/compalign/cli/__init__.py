"""Command-line apps; the only code in compalign that prints."""
