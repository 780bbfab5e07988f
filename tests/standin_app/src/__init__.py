"""Stand-in for the user's application package (`src`), used only by tests."""
