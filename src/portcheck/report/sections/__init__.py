"""The report's sections, one module each: each builds its section's tables (plain data) from the loaded artifacts."""
