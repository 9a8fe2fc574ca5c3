"""Which frames a connection that (re)attaches is sent (chat/turn_log.py): the rules of docs/PROTOCOL.md,
"Resuming a turn", without a server."""

import pytest

from chatserver.chat.turn_log import TurnLog, replay_start
from chatserver.errors import BadRequest
from engine import DoneEvent, TokenEvent, Timings, Usage

DONE = DoneEvent("stop", "abc", [1, 2, 3], Usage(5, 3, 0), Timings(1.0, 1.0, 1.0), "miss")


def _log(num_tokens: int, finished: bool) -> TurnLog:
    log = TurnLog("t1", "question")
    for i in range(num_tokens):
        assert log.append(TokenEvent("abc"[i % 3], i)) == i
    if finished:
        log.append(DONE)
    return log


@pytest.mark.parametrize("finished", [False, True])
def test_the_named_turn_continues_after_the_seq_the_client_holds(finished):
    log = _log(3, finished)
    assert replay_start(log, "t1", 0) == 1
    assert [seq for seq, _ in log.after(replay_start(log, "t1", 1) - 1)] == [2] + ([3] if finished else [])


def test_a_client_holding_a_running_turns_last_frame_is_sent_only_what_comes_next():
    log = _log(3, finished=False)
    assert replay_start(log, "t1", 2) == 3 and log.after(2) == []


def test_a_client_holding_the_whole_finished_turn_is_sent_nothing():
    assert replay_start(_log(3, finished=True), "t1", 3) is None


@pytest.mark.parametrize("turn_id,seq", [(None, None), ("another", 1)])
def test_a_running_turn_is_sent_whole_to_a_client_that_does_not_name_it(turn_id, seq):
    log = _log(2, finished=False)
    assert replay_start(log, turn_id, seq) == 0
    assert [s for s, _ in log.after(-1)] == [0, 1]


@pytest.mark.parametrize("turn_id,seq", [(None, None), ("another", 0)])
def test_a_finished_turn_is_not_sent_to_a_client_that_does_not_name_it(turn_id, seq):
    assert replay_start(_log(2, finished=True), turn_id, seq) is None


def test_no_turn_yet_means_nothing_to_send():
    assert replay_start(None, "t1", 4) is None and replay_start(None, None, None) is None


@pytest.mark.parametrize("finished,seq", [(False, 3), (False, 50), (True, 4)])
def test_a_seq_beyond_the_last_frame_is_refused(finished, seq):
    with pytest.raises(BadRequest, match="last_seq"):
        replay_start(_log(3, finished), "t1", seq)


def test_a_finished_log_takes_nothing_more():
    log = _log(1, finished=True)
    assert log.is_finished and log.last_seq == 1
    with pytest.raises(AssertionError):
        log.append(TokenEvent("x", 9))
