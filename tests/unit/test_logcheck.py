"""Only evidence that the log went backwards starts a new log generation."""

from __future__ import annotations

from consumers.logcheck import LogVerdict, RecordAt, judge_log

SAME, LOST, UNKNOWN = LogVerdict.SAME, LogVerdict.LOST, LogVerdict.UNKNOWN


def test_an_end_below_the_stored_offset_is_a_lost_log() -> None:
    assert judge_log(10, "p9", end_offset=4, begin_offset=0, answer=None) is LOST
    assert judge_log(10, "p9", end_offset=4, begin_offset=0, answer=RecordAt(9, "p1")) is LOST
    assert judge_log(10, None, end_offset=4, begin_offset=0, answer=None) is LOST


def test_an_end_below_the_stored_offset_with_our_last_record_there_is_the_same_log() -> None:
    # The embedded broker reported 17,959 as the end of a partition applied up to
    # 18,000 (its end offset lags after concurrent appends): the record was there.
    assert (
        judge_log(18000, "p", end_offset=17959, begin_offset=0, answer=RecordAt(17999, "p")) is SAME
    )


def test_no_answer_is_unknown_not_lost() -> None:
    assert judge_log(10, "p9", end_offset=12, begin_offset=0, answer=None) is UNKNOWN


def test_the_record_before_the_stored_offset_decides() -> None:
    assert judge_log(10, "p9", 12, 0, RecordAt(9, "p9")) is SAME
    assert judge_log(10, "p9", 12, 0, RecordAt(9, "another")) is LOST
    assert judge_log(10, "p9", 12, 0, RecordAt(9, None)) is LOST


def test_a_log_start_past_the_record_is_the_same_log_trimmed() -> None:
    assert judge_log(10, "p9", 12, begin_offset=10, answer=None) is SAME
    assert judge_log(10, "p9", 12, 0, RecordAt(11, "p11")) is SAME


def test_nothing_applied_yet_needs_no_check() -> None:
    assert judge_log(0, None, 0, 0, None) is SAME
    assert judge_log(5, None, 5, 0, None) is SAME
