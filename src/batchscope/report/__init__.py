"""Output for people (console tables, progress) and for machines (JSON)."""
