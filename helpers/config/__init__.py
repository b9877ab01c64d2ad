"""Parameters: one declaration each, profiles, and validation before any work starts."""
