"""Test and demo support: an embedded PostgreSQL server, an example project, the demo."""
