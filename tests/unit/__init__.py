"""The unit tier: in-process tests of pure logic, no database (``pytest -m unit``)."""
