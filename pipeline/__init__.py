"""keyhand package."""
