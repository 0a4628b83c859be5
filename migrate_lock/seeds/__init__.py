"""Reference data: seed files found, merged (CSV) or run (SQL), and applied once per change."""
