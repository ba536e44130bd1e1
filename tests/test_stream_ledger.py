"""The ledger counts each client of a resource once, whether it is kept in the entry or in the table."""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from sensor.stream.worker import INLINE_CLIENTS, Worker


def count(entry: dict, clients: list[str], table: dict | None = None) -> tuple[dict, dict]:
    w = SimpleNamespace(clients=defaultdict(int, table or {}))
    for c in clients:
        Worker._count_client(w, entry, "r", c)
    return entry, w.clients


def test_first_clients_in_the_entry_then_the_table() -> None:
    names = [f"k{i}" for i in range(INLINE_CLIENTS + 5)]
    e, table = count({}, names + names[::-1] + names[:3])       # each seen again, in both places
    assert e["clients"] == len(names)
    assert e["client_list"] == names[:INLINE_CLIENTS]
    assert sorted(k.split("\x1f")[1] for k in table if table[k]) == sorted(names[INLINE_CLIENTS:])


def test_an_entry_from_before_the_list_keeps_using_the_table() -> None:
    e, table = count({"clients": 1}, ["old", "new", "new"], {"r\x1fold": 1})
    assert e["clients"] == 2 and "client_list" not in e and table["r\x1fnew"] == 1
