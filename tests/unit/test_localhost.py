"""The production localhost check compares addresses, in every spelling libpq accepts."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrate_lock.errors import ConfigError
from migrate_lock.guard import _is_local, check_database_urls

pytestmark = pytest.mark.unit

loopback_v4 = st.integers(0x7F000000, 0x7FFFFFFF).map(ipaddress.IPv4Address)
public_v4 = st.ip_addresses(v=4).filter(lambda a: not (a.is_loopback or a.is_unspecified))


def spellings(address: ipaddress.IPv4Address) -> list[str]:
    """The forms inet_aton (and so getaddrinfo, and so libpq) reads as ``address``."""
    n = int(address)
    a, b, c, d = address.packed
    return [
        str(address),
        f"{a}.{(n >> 16) & 0xFF}.{n & 0xFFFF}",  # a.b.c16
        f"{a}.{n & 0xFFFFFF}",  # a.b24 (127.1)
        str(n),  # one number
        hex(n),
        f"{a:#x}.{b}.{c}.{d}",
        f"0{a:o}.{b}.{c}.{d}",  # octal
        f"::ffff:{address}",
        f"[::ffff:{address}]",
    ]


@given(loopback_v4)
def test_every_spelling_of_a_loopback_address_is_local(address: ipaddress.IPv4Address) -> None:
    for spelling in spellings(address):
        assert _is_local(spelling), spelling


@given(public_v4)
def test_no_spelling_of_another_address_is_local(address: ipaddress.IPv4Address) -> None:
    for spelling in spellings(address):
        assert not _is_local(spelling), spelling


@pytest.mark.parametrize(
    "host",
    [
        "127.1",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "[0:0::1]",
        "[::1]",
        "0.0.0.0",
        "[::]",
        "0",
        "localhost.",
    ],
)
def test_refused_in_production(host: str) -> None:
    with pytest.raises(ConfigError, match="localhost"):
        check_database_urls("production", {"DATABASE_URL": f"postgresql://a:Str0ng-pw@{host}/db"})


@pytest.mark.parametrize(
    "query", ["hostaddr=127.0.0.1", "hostaddr=10.0.0.1,127.1", "host%61ddr=::1"]
)
def test_hostaddr_is_where_libpq_connects(query: str) -> None:
    """Why: host= is then only the name checked by TLS; hostaddr is the address used."""
    with pytest.raises(ConfigError, match="hostaddr"):
        check_database_urls(
            "production", {"DATABASE_URL": f"postgresql://a:Str0ng-pw@db.example.com/db?{query}"}
        )


def test_pghostaddr_counts_when_the_url_names_no_hostaddr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOSTADDR", "127.0.0.1")
    with pytest.raises(ConfigError, match="hostaddr"):
        check_database_urls(
            "production", {"DATABASE_URL": "postgresql://a:Str0ng-pw@db.example.com/db"}
        )


def test_a_remote_hostaddr_lifts_a_local_looking_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGHOSTADDR", raising=False)
    check_database_urls(
        "production",
        {"DATABASE_URL": "postgresql://a:Str0ng-pw@db.example.com/db?hostaddr=10.1.2.3"},
    )
