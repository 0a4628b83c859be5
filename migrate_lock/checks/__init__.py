"""CI checks on a project's revisions: ``smoke``, ``lint`` and ``plan``."""
