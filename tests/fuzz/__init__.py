"""The fuzz tier (issue 14, item 10): property-based tests on real ``migrate-lock`` processes."""
