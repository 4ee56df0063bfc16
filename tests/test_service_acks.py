"""The HEC ack book across restarts: ids per channel continue where they stopped, an id committed
before the restart stays true, one whose records never reached the spool is never true, and a
line torn by a crash is ignored."""

from __future__ import annotations

from exfilwatch.service.acks import FILE, AckBook


def test_ids_continue_per_channel_and_stay_true_across_a_restart(tmp_path):
    book = AckBook(tmp_path, committed=0, spool_end=0)
    assert [book.issue("a", 100, 0), book.issue("b", 200, 0), book.issue("a", 300, 0)] == [0, 0, 1]
    book.sync()
    book.close()
    with open(tmp_path / FILE, "ab") as handle:
        handle.write(b'["a", 2, 40')  # torn by a SIGKILL mid-write: that request was never answered
    again = AckBook(tmp_path, committed=200, spool_end=300)
    assert again.status("a", [0, 1, 2], committed=200) == {"0": True, "1": False, "2": False}
    assert again.status("b", [0, 1], committed=200) == {"0": True, "1": False}
    assert again.issue("a", 400, 200) == 2
    assert again.status("a", [1, 2], committed=400) == {"1": True, "2": True}
    again.close()


def test_an_id_whose_records_never_reached_the_spool_is_dropped(tmp_path):
    book = AckBook(tmp_path, committed=0, spool_end=0)
    book.issue("a", 100, 0)
    book.issue("a", 250, 0)  # its records were cut off the spool's torn tail at restart
    book.close()
    again = AckBook(tmp_path, committed=100, spool_end=100)
    assert again.issue("a", 180, 100) == 1  # id 1 was never answered: it is given again
    assert again.status("a", [0, 1], committed=250) == {"0": True, "1": True}
    again.close()
