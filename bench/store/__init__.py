"""The run folder, the one owner of its files, and what is exported from it."""
