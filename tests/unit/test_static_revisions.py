"""The static reader of revision files (issue 16, item 1): the heads without ``freeze``.

It must agree with Alembic wherever it answers, and refuse (None: Alembic decides)
wherever it cannot be certain: "nothing to do" must never be said wrongly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate_lock.lean import static_revisions
from migrate_lock.lean.alembic_compat import reads_recursive_version_locations
from migrate_lock.lean.static_revisions import StaticRevisions, read_revisions

from support import alembic_view

pytestmark = pytest.mark.unit

INI = """[alembic]
script_location = %(here)s/migrations
path_separator = os
{extra}
"""


def revision_file(
    rev: str,
    down: object = None,
    *,
    depends_on: object = None,
    labels: object = None,
    annotated: bool = False,
    with_optional: bool = True,
    body: str = "pass",
) -> str:
    """A revision file as Alembic's templates write it."""
    note = ": str" if annotated else ""
    union = ": str | Sequence[str] | None" if annotated else ""
    lines = [
        f'"""step {rev}\n\nRevision ID: {rev}\nRevises: {down}\n"""',
        "from collections.abc import Sequence" if annotated else "",
        "from alembic import op",
        "",
        "# revision identifiers, used by Alembic.",
        f"revision{note} = {rev!r}",
        f"down_revision{union} = {down!r}",
    ]
    if with_optional or labels is not None:
        lines.append(f"branch_labels{union} = {labels!r}")
    if with_optional or depends_on is not None:
        lines.append(f"depends_on{union} = {depends_on!r}")
    lines += ["", "", "def upgrade() -> None:", f"    {body}", "", "", "def downgrade() -> None:"]
    return "\n".join([*lines, "    pass", ""])


def project(tmp_path: Path, files: dict[str, str], extra: str = "") -> Path:
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (versions / name).write_text(text)
    ini = tmp_path / "alembic.ini"
    ini.write_text(INI.format(extra=extra))
    return ini


CHAIN = {
    "a1_first.py": revision_file("a1"),
    "b2_second.py": revision_file("b2", "a1", annotated=True),
    "c3_third.py": revision_file("c3", "b2", with_optional=False),
}


def test_a_chain_reads_as_alembic_reads_it(tmp_path: Path) -> None:
    ini = project(tmp_path, CHAIN)

    found = read_revisions(ini)

    assert found == StaticRevisions(heads=("c3",), revisions=frozenset({"a1", "b2", "c3"}))
    assert found == alembic_view(ini)


def test_merges_branch_labels_and_depends_on_read_as_alembic_reads_them(tmp_path: Path) -> None:
    ini = project(
        tmp_path,
        {
            **CHAIN,
            "d4.py": revision_file("d4", "a1", labels=("side",), annotated=True),
            "e5.py": revision_file("e5", ("c3", "d4"), depends_on=["b2"]),
            "f6.py": revision_file("f6", None, labels="other", depends_on="a1"),
            "g7.py": 'revision = "g7"\ndown_revision = (\n    "f6",\n    \'e5\',\n)\n',
            "__init__.py": "",  # Alembic skips it: a package's marker
        },
    )

    found = read_revisions(ini)

    assert found is not None
    assert found.heads == ("g7",)
    assert found == alembic_view(ini)


def test_several_heads_and_locations(tmp_path: Path) -> None:
    other = tmp_path / "more"
    other.mkdir()
    (other / "x9.py").write_text(revision_file("x9", "a1"))
    (other / "nested").mkdir()
    (other / "nested" / "y8.py").write_text(revision_file("y8", "x9"))
    locations = os.pathsep.join(["%(here)s/migrations/versions", "%(here)s/more"])
    ini = project(
        tmp_path,
        CHAIN,
        f"version_locations = {locations}\nrecursive_version_locations = true"
        # Alembic before 1.16 reads no path_separator (the oldest CI runs: 1.9).
        "\nversion_path_separator = os",
    )

    found = read_revisions(ini)

    assert found is not None
    # Alembic before 1.10 reads no recursive_version_locations: more/nested is not loaded.
    assert found.heads == (("c3", "y8") if reads_recursive_version_locations() else ("c3", "x9"))
    assert found == alembic_view(ini)


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    ini = project(tmp_path, CHAIN)
    assert read_revisions(ini) is not None

    (tmp_path / "migrations" / "versions" / "d4_fourth.py").write_text(revision_file("d4", "c3"))

    found = read_revisions(ini)
    assert found is not None
    assert found.heads == ("d4",)


# --- what it must refuse -------------------------------------------------------------------

GOOD = revision_file("d4", "c3")


@dataclass(frozen=True)
class Refused:
    """A project change the reader must not vouch for."""

    why: str
    file: str | bytes | None = None  # a fourth revision file, d4.py
    name: str = "d4.py"
    extra: str = ""  # alembic.ini lines


REFUSED = [
    Refused("a call", GOOD.replace("revision = 'd4'", "revision = make_id()")),
    Refused("an f-string", GOOD.replace("revision = 'd4'", 'revision = f"d{4}"')),
    Refused("an expression", GOOD.replace("down_revision = 'c3'", "down_revision = 'c' + '3'")),
    Refused("a name", GOOD.replace("down_revision = 'c3'", "down_revision = PARENT")),
    Refused("a number", GOOD.replace("revision = 'd4'", "revision = 4")),
    Refused("a set", GOOD.replace("down_revision = 'c3'", "down_revision = {'c3'}")),
    Refused("a dict", GOOD.replace("depends_on = None", "depends_on = {'a1': 1}")),
    Refused("an empty id", GOOD.replace("revision = 'd4'", "revision = ''")),
    Refused("a reserved word", GOOD.replace("revision = 'd4'", "revision = 'heads'")),
    Refused("an illegal character", GOOD.replace("revision = 'd4'", "revision = 'd-4'")),
    Refused("assigned twice", GOOD + "\nrevision = 'd5'\n"),
    Refused(
        "in an if",
        GOOD.replace("revision = 'd4'", "if True:\n    revision = 'd4'\nelse:\n    revision = 'e'"),
    ),
    Refused(
        "in a try", GOOD.replace("revision = 'd4'", "try:\n    revision = 'd4'\nfinally:\n  pass")
    ),
    Refused("a tuple target", GOOD.replace("revision = 'd4'", "revision, other = 'd4', 'x'")),
    Refused("chained", GOOD.replace("revision = 'd4'", "revision = other = 'd4'")),
    Refused("augmented", GOOD + "\nrevision += 'x'\n"),
    Refused("deleted", GOOD + "\ndel branch_labels\n"),
    Refused(
        "annotated, no value", GOOD.replace("revision = 'd4'", "revision: str\nrevision = 'd4'")
    ),
    Refused("imported", "from elsewhere import revision\n" + GOOD.replace("revision = 'd4'\n", "")),
    Refused("imported as", GOOD + "\nimport os as depends_on\n"),
    Refused("a star import", "from elsewhere import *\n" + GOOD),
    Refused("globals()", GOOD + "\nglobals()['revision'] = 'd5'\n"),
    Refused("sys.modules", GOOD + "\nimport sys\nsys.modules[__name__].down_revision = 'b2'\n"),
    Refused(
        "setattr in a decorator",
        GOOD.replace(
            "def upgrade",
            "@(lambda f: setattr(sys.modules[__name__], 'revision', 'x') or f)\ndef upgrade",
        ),
    ),
    Refused("a global statement", GOOD + "\ndef f():\n    global revision\n    revision = 'x'\n"),
    Refused(
        "a walrus in a default", GOOD.replace("def upgrade()", "def upgrade(x=(revision := 'e'))")
    ),
    Refused("exec", GOOD + "\nexec('revision = \"e\"')\n"),
    Refused(
        "a fullwidth globals in a decorator (NFKC)",
        GOOD.replace(
            "def upgrade", "@(lambda f: \uff47lobals().update(revision='e') or f)\ndef upgrade"
        ),
    ),
    Refused("a function named so", GOOD + "\ndef branch_labels():\n    pass\n"),
    Refused("a class named so", GOOD + "\nclass depends_on:\n    pass\n"),
    Refused("a loop variable", GOOD + "\nfor revision in ['x']:\n    pass\n"),
    Refused("no down_revision", GOOD.replace("down_revision = 'c3'\n", "")),
    Refused("no revision", GOOD.replace("revision = 'd4'\n", ""), name="d4abc.py"),
    Refused("a syntax error in the assignments", GOOD.replace("'d4'", "'d4")),
    Refused(
        "a rendered template left with a hole",
        GOOD.replace("down_revision = 'c3'", "down_revision: str | None = "),
    ),
    Refused(
        "a rendered template left with mako",
        GOOD.replace("down_revision = 'c3'", "down_revision = ${repr(down_revision)}"),
    ),
    Refused(
        "an unexpected indent", GOOD.replace("branch_labels = None", "    branch_labels = None")
    ),
    Refused("a latin-1 source", "# -*- coding: latin-1 -*-\n" + GOOD),
    Refused("not UTF-8", GOOD.replace("pass", "x = '\xe9'").encode("latin-1")),
    Refused("a form feed", GOOD.replace("branch_labels = None", "\fbranch_labels = None")),
    Refused("a parent nobody defines", revision_file("d4", "zz")),
    Refused("depends_on a branch label", revision_file("d4", "c3", depends_on="side")),
    Refused("depends_on a partial id", revision_file("d4", "c3", depends_on="a")),
    Refused("an id defined twice", revision_file("c3", "b2")),
    Refused("a cycle", revision_file("a0", "c3").replace("'a0'", "'a1'")),
    Refused("a branch label twice", revision_file("d4", "c3", labels=("x", "x"))),
    Refused("a label that is an id", revision_file("d4", "c3", labels="a1")),
    Refused("the same parent twice", revision_file("d4", ("c3", "c3"))),
    Refused("a name starting with _", GOOD, name="_d4.py"),
    Refused("a hidden file", GOOD, name=".d4.py"),
    Refused("compiled files beside the sources", "", name="d4.pyc"),
    Refused("sourceless", extra="sourceless = true"),
    Refused("revision_environment", extra="revision_environment = true"),
    Refused("a boolean Alembic reads as false", extra="recursive_version_locations = True"),
    Refused("a package resource", extra="version_locations = mypackage:versions"),
    Refused("a missing location", extra="version_locations = %(here)s/nowhere"),
    Refused("a separator Alembic does not know", extra="path_separator = ,"),
    Refused(
        "a location listed twice",
        extra="version_locations = %(here)s/migrations/versions:%(here)s/migrations/versions",
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=[case.why for case in REFUSED])
def test_what_it_cannot_vouch_for_it_leaves_to_alembic(tmp_path: Path, case: Refused) -> None:
    """Why: the at-head path says "nothing to do" on these heads; a wrong guess skips
    a revision. Each project here reads fine before the one change."""
    ini = project(tmp_path, CHAIN)
    assert read_revisions(ini) is not None
    if case.file is not None:
        path = tmp_path / "migrations" / "versions" / case.name
        if isinstance(case.file, bytes):
            path.write_bytes(case.file)
        else:
            path.write_text(case.file)
    if case.extra:
        ini.write_text(INI.format(extra=case.extra))

    assert read_revisions(ini) is None


def test_a_symbolic_link_is_left_to_alembic(tmp_path: Path) -> None:
    ini = project(tmp_path, CHAIN)
    (tmp_path / "d4.py").write_text(GOOD)
    (tmp_path / "migrations" / "versions" / "d4.py").symlink_to(tmp_path / "d4.py")

    assert read_revisions(ini) is None


def test_no_revision_file_is_left_to_alembic(tmp_path: Path) -> None:
    """Alembic's NoRevisions (or ALLOW_NO_REVISIONS) is the full path's to report."""
    assert read_revisions(project(tmp_path, {})) is None


def test_a_missing_alembic_ini_is_left_to_alembic(tmp_path: Path) -> None:
    assert read_revisions(tmp_path / "alembic.ini") is None


def test_the_fast_reader_and_ast_agree_on_the_usual_shapes(tmp_path: Path) -> None:
    """Why: the regular expressions are the fast path for a file, ``ast`` the exact one;
    a file of the usual shape must give the same values both ways."""
    for source in (GOOD, revision_file("e5", ("c3", "d4"), labels=["x"], annotated=True)):
        fast = static_revisions._fast(source)
        assert fast is not None
        assert fast == static_revisions._checked(static_revisions._exact(source, "x.py"), "x")


def test_unusual_but_certain_files_go_to_ast_and_are_read(tmp_path: Path) -> None:
    """A constant before the assignments, a class, escapes, a word like ``globals`` in
    a comment: not the regular expressions' shape, but ``ast`` can vouch for them."""
    odd = GOOD.replace("from alembic import op", "from alembic import op\nTABLE = 'x'")
    odd += "\nclass Helper:\n    name = 'x'\n"
    odd = odd.replace("revision = 'd4'", 'revision = "d\\x34"')
    odd = '"""\nrevision = "zz"\n"""\n' + odd  # text in a string is no assignment
    assert static_revisions._fast(odd) is None
    ini = project(tmp_path, {**CHAIN, "d4.py": odd, "e5.py": revision_file("e5", "d4")})

    found = read_revisions(ini)

    assert found is not None
    assert found.heads == ("e5",)
    assert found == alembic_view(ini)


# --- the property: its heads are Alembic's, or it defers --------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, str], bool]:
    """Revision files of a random graph: chains, branches, merges, several bases, branch
    labels, depends_on, annotated assignments or not, optional names left out, ids of
    several shapes, multi-line tuples and lists; now and then a broken one."""
    count = draw(st.integers(min_value=1, max_value=12))
    style = draw(st.sampled_from(["hex", "number", "word"]))
    ids = [
        {"hex": f"{index:04x}ab{index * 7919 % 65536:06x}", "number": f"{index:04d}"}.get(
            style, f"step_{index}"
        )
        for index in range(count)
    ]
    files: dict[str, str] = {}
    labels_used: set[str] = set()
    for index, rev in enumerate(ids):
        earlier = ids[:index]
        parents = draw(
            st.lists(st.sampled_from(earlier), max_size=min(3, index), unique=True)
            if earlier
            else st.just([])
        )
        if earlier and not parents and draw(st.integers(0, 4)) > 0:
            parents = [earlier[-1]]  # mostly connected; sometimes a second base
        depends = (
            draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True)) if earlier else []
        )
        label = draw(st.sampled_from([None, "one", "two", "three"]))
        labels = None if label is None or label in labels_used else label
        if labels is not None:
            labels_used.add(labels)
        down: object = parents[0] if len(parents) == 1 else (tuple(parents) or None)
        if isinstance(down, tuple) and draw(st.booleans()):
            down = list(down)
        source = revision_file(
            rev,
            down,
            depends_on=(depends[0] if len(depends) == 1 else depends) or None,
            labels=(labels,) if labels and draw(st.booleans()) else labels,
            annotated=draw(st.booleans()),
            with_optional=draw(st.booleans()),
            body=draw(st.sampled_from(["pass", "op.execute('SELECT revision FROM x')"])),
        )
        if isinstance(down, tuple) and draw(st.booleans()):
            spread = "(\n    " + ",\n    ".join(repr(p) for p in down) + ",\n)"
            source = source.replace(repr(down), spread)
        files[f"{rev}_{index}.py"] = source
    breakage = draw(st.sampled_from([None, None, None, "dangling", "duplicate", "nonliteral"]))
    if breakage == "dangling":
        files["zz_dangling.py"] = revision_file("zz", "nowhere")
    elif breakage == "duplicate":
        files["zz_duplicate.py"] = revision_file(ids[0], None)
    elif breakage == "nonliteral":
        files["zz_computed.py"] = revision_file("zz", ids[-1]).replace("'zz'", "'z' * 2")
    return files, breakage is not None


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
def test_its_heads_are_alembics_or_it_defers(
    tmp_path_factory: pytest.TempPathFactory, history: tuple[dict[str, str], bool]
) -> None:
    """Why: the at-head decision rests on these heads. Where Alembic loads the scripts the
    reader must give exactly its heads and revisions (and, for files of the shapes
    Alembic's templates write, answer at all); where Alembic refuses, it must defer."""
    files, broken = history
    ini = project(tmp_path_factory.mktemp("history"), files)

    found = read_revisions(ini)
    expected = alembic_view(ini)

    if expected is None:
        assert found is None
    else:
        assert found in (None, expected)
    if not broken:
        assert expected is not None
        assert found == expected


def test_reading_a_long_history_is_cheap(tmp_path: Path) -> None:
    """Why: the at-head path's CPU with 1000 revisions may be at most 1.2x that with 20;
    a parse of every file with ``ast`` alone costs more than that whole budget."""
    files = {
        f"{n:04d}_step.py": revision_file(f"{n:04d}", f"{n - 1:04d}" if n else None)
        for n in range(300)
    }
    ini = project(tmp_path, files)
    for name, text in files.items():
        assert static_revisions._fast(text) is not None, name

    assert (found := read_revisions(ini)) is not None
    assert found.heads == ("0299",)
