"""Project maintenance scripts."""
