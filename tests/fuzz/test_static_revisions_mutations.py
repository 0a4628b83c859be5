"""The static reader against Alembic on mutated revision files (issue 16, item 1).

Valid Python inserted into a revision file, here or there: a second assignment, one in an
``if``/``try``/loop, ``globals()``/``vars()``/``locals()``/``exec``/frames, an import that
binds one of the names, a walrus, a ``global`` in a called function, harmless statements,
classes and decorators. Whenever Alembic loads the result, the reader must give exactly
Alembic's heads and revisions, or defer (None). It is never allowed to answer differently:
that answer is what ``upgrade`` at head trusts to say "nothing to do".

In process, no database (Alembic's ScriptDirectory imports the files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrate_lock.lean.static_revisions import read_revisions

from .harness import examples
from support import alembic_view

INI = "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"

CHAIN = [("a1", None), ("b2", "a1"), ("c3", "b2"), ("d4", "c3")]

#: Valid Python at module level; each may change what Alembic reads, or not.
SNIPPETS = [
    "revision = 'zz'",
    "down_revision = None",
    "globals()['down_revision'] = None",
    "vars()['revision'] = 'vv'",
    "locals().update(revision='ll')",
    "exec(\"revision = 'ee'\")",
    "import sys\nsys._getframe(0).f_globals['revision'] = 'fr'",
    "if True:\n    depends_on = None\nelse:\n    pass",
    "if True:\n    revision = 'iff'",
    "try:\n    revision = 'tt'\nexcept Exception:\n    pass",
    "for depends_on in [None]:\n    pass",
    "for revision in ['loop']:\n    pass",
    "(down_revision := None)",
    "def helper():\n    global revision\n    revision = 'gg'\n\n\nhelper()",
    "from os import sep as branch_labels",
    "from os import path as revision",
    "import os as depends_on\ndepends_on = None",
    "del branch_labels\nbranch_labels = None",
    "revision: str",
    "x = 1",
    "import os",
    "class Helper:\n    revision = 'inner'",
    "@(lambda f: f)\ndef decorated():\n    pass",
    "@(lambda f: globals().update(revision='dd') or f)\ndef decorated():\n    pass",
    "def defaulted(x=globals().update(down_revision=None)):\n    pass",
    "TABLE = 'users'",
    "branch_labels = ('extra',)",
    "depends_on = 'a1'",
    "revision = 'd' 'x'",
]

WHERE = ["after the assignments", "at the end", "after the docstring"]


def source(rev: str, down: str | None) -> str:
    return (
        f'"""step {rev}\n\nRevision ID: {rev}\n"""\n'
        "from alembic import op\n\n"
        f"revision = {rev!r}\n"
        f"down_revision = {down!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n"
        "\n\ndef upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def insert(text: str, snippet: str, where: str) -> str:
    if where == "at the end":
        return text + "\n" + snippet + "\n"
    if where == "after the docstring":
        end = text.index('"""\n', 3) + 4
        return text[:end] + snippet + "\n" + text[end:]
    marker = "\n\ndef upgrade"
    return text.replace(marker, "\n" + snippet + "\n" + marker, 1)


@examples(share=3.0)
@given(
    mutations=st.lists(
        st.tuples(
            st.integers(0, len(CHAIN) - 1), st.sampled_from(SNIPPETS), st.sampled_from(WHERE)
        ),
        min_size=1,
        max_size=3,
    )
)
def test_the_reader_agrees_with_alembic_or_defers(
    tmp_path_factory: pytest.TempPathFactory, mutations: list[tuple[int, str, str]]
) -> None:
    root = tmp_path_factory.mktemp("mutated")
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    texts = {rev: source(rev, down) for rev, down in CHAIN}
    for index, snippet, where in mutations:
        rev = CHAIN[index][0]
        texts[rev] = insert(texts[rev], snippet, where)
    for rev, text in texts.items():
        (versions / f"{rev}_step.py").write_text(text)
    (root / "alembic.ini").write_text(INI)

    found = read_revisions(root / "alembic.ini")
    expected = alembic_view(root / "alembic.ini")

    if expected is not None:
        assert found in (None, expected), (found, expected, mutations)


def test_harmless_mutations_are_still_read(tmp_path: Path) -> None:
    """The property above is not vacuous: the files it mutates are read as Alembic reads
    them, and so are files with a harmless statement added."""
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    for rev, down in CHAIN:
        text = insert(source(rev, down), "import os", "after the docstring")
        (versions / f"{rev}_step.py").write_text(insert(text, "x = 1", "at the end"))
    (tmp_path / "alembic.ini").write_text(INI)

    found = read_revisions(tmp_path / "alembic.ini")

    assert found is not None
    assert found == alembic_view(tmp_path / "alembic.ini")
