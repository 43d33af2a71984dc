"""The DuckDB manifest: schema migrations, stable views, and run records."""
