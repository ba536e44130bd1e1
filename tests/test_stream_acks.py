"""The worker's in-order ack gate, against faust's own commit arithmetic (no broker needed)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from hypothesis import given
from hypothesis import strategies as st

from sensor.stream.acks import InOrderAcks


@dataclass(eq=False)
class Msg:
    tp: str
    offset: int


def faust_offsets(committed: int | None = None):
    """Just the state faust's ``Consumer._new_offset`` reads, so the real method decides what to commit."""
    return SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(lambda: None),
                           _committed_offset=defaultdict(lambda: committed))


def faust_commit(state, tp: str) -> int | None:
    new = Consumer._new_offset(state, tp)
    if new is not None:
        state._committed_offset[tp] = new
    return state._committed_offset[tp]


def feed(state, msg: Msg) -> None:
    state._acked[msg.tp].append(msg.offset)
    state._acked_index[msg.tp].add(msg.offset)


def test_without_the_gate_faust_commits_past_an_open_exchange():
    """The premise: exchange A (offsets 0-2) is open, exchange B (3-5) finished and acked. Unguarded, faust
    commits 6, so a worker that dies now leaves A's meta record behind the committed offset."""
    state = faust_offsets()
    for off in (3, 4, 5):
        feed(state, Msg("p", off))
    assert faust_commit(state, "p") == 6


@given(st.permutations(range(12)), st.sampled_from([None, 0]))
def test_faust_never_commits_past_a_message_that_is_not_done(order, committed):
    state = faust_offsets(committed)
    gate = InOrderAcks(lambda m: feed(state, m))
    msgs = [Msg("p", i) for i in range(12)]
    for m in msgs:
        gate.track(m)
    done: set[int] = set()
    for off in order:
        gate.done(msgs[off])
        done.add(off)
        first_open = min(set(range(12)) - done, default=12)
        assert (faust_commit(state, "p") or 0) <= first_open
    assert faust_commit(state, "p") == 12 and gate.held() == 0


def test_acks_go_out_in_offset_order_per_partition():
    acked: list[tuple[str, int]] = []
    gate = InOrderAcks(lambda m: acked.append((m.tp, m.offset)))
    a = [Msg("a", i) for i in range(4)]
    b = [Msg("b", i) for i in range(2)]
    for m in a + b:
        gate.track(m)
    gate.done(a[2])
    gate.done(b[0])
    gate.done(a[1])
    assert acked == [("b", 0)]
    gate.done(a[0])
    assert acked == [("b", 0), ("a", 0), ("a", 1), ("a", 2)]
    gate.done(a[2])                                      # twice: nothing more
    assert gate.held() == 2


def test_a_message_read_again_replaces_the_old_one():
    """After a rebalance faust rewinds a kept partition: the old message object no longer counts."""
    acked: list[Msg] = []
    gate = InOrderAcks(acked.append)
    old = [Msg("p", 0), Msg("p", 1)]
    for m in old:
        gate.track(m)
    again = Msg("p", 0)
    gate.track(again)
    gate.done(old[0])
    gate.done(old[1])
    assert acked == []
    gate.done(again)
    assert acked == [again, old[1]]


def test_forget_drops_partitions_that_moved_away():
    acked: list[Msg] = []
    gate = InOrderAcks(acked.append)
    gone, kept = Msg("gone", 0), Msg("kept", 0)
    gate.track(gone)
    gate.track(kept)
    gate.forget({"kept"})
    gate.done(gone)
    gate.done(kept)
    assert acked == [kept] and gate.held() == 0
