"""Byte-level tests of the AGI protocol layer (no I/O)."""

import pytest

from ivr.agi import protocol
from ivr.agi.protocol import (
    MAX_HEADER_BYTES,
    MAX_HEADER_LINES,
    MAX_LINE,
    MAX_USAGE,
    AgiHangup,
    AgiInvalidCommand,
    AgiProtocolError,
    AgiUsageError,
    HangupNotice,
    HeaderParser,
    LineBuffer,
    Reply,
    ReplyParser,
    format_command,
    parse_result_line,
    quote_argument,
    raise_for_reply,
    reply_allowance,
)

HEADER = (
    b"agi_network: yes\n"
    b"agi_network_script: topup?lang=es&x=1\n"
    b"agi_request: agi://127.0.0.1:4573/topup?lang=es&x=1\n"
    b"agi_channel: PJSIP/alice-00000001\n"
    b"agi_uniqueid: 1700000000.42\n"
    b"agi_callerid: 15551234567\n"
    b"agi_calleridname: Alice: the first\n"
    b"agi_arg_2: second\n"
    b"agi_arg_1: first\n"
    b"\n"
)


# ------------------------------------------------------------------ header block


def test_header_block_in_one_chunk():
    env = HeaderParser().feed(HEADER)
    assert env is not None
    assert env.route == "topup"
    assert env.query == {"lang": "es", "x": "1"}
    assert env.uniqueid == "1700000000.42"
    assert env.channel == "PJSIP/alice-00000001"
    assert env.callerid == "15551234567"
    assert env["calleridname"] == "Alice: the first"  # only the first colon splits
    assert env.args == ("first", "second")  # ordered by number, not arrival


def test_header_block_byte_by_byte():
    parser = HeaderParser()
    results = [parser.feed(HEADER[i : i + 1]) for i in range(len(HEADER))]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None and results[-1].route == "topup"


def test_header_block_crlf_and_leftover():
    parser = HeaderParser()
    env = parser.feed(b"agi_network_script: hello\r\n\r\n200 result=0\n")
    assert env is not None and env.route == "hello"
    assert parser.leftover == b"200 result=0\n"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\n\n",  # not AGI at all
        b"agi_network_script hello\n\n",  # no colon
        b"AGI_NETWORK: yes\n\n",  # keys are lower case
        b"agi_network: yes\nrandom junk\n\n",
        b"\n",  # empty block
    ],
)
def test_malformed_header_is_refused(data):
    with pytest.raises(AgiProtocolError):
        HeaderParser().feed(data)


def test_eof_inside_header_block_raises():
    parser = HeaderParser()
    assert parser.feed(b"agi_network: yes\nagi_network_scr") is None
    with pytest.raises(AgiProtocolError, match="closed inside the header block"):
        parser.eof()


def test_eof_after_complete_block_is_fine():
    parser = HeaderParser()
    parser.feed(b"agi_network: yes\n\n")
    parser.eof()


def test_header_limits():
    with pytest.raises(AgiProtocolError, match="too long"):
        HeaderParser().feed(b"agi_x: " + b"a" * 10000)
    many = b"".join(b"agi_k%d: v\n" % i for i in range(MAX_HEADER_LINES + 1))
    with pytest.raises(AgiProtocolError, match="too many"):
        HeaderParser().feed(many)


def test_header_line_limit_applies_to_complete_lines():
    """A 12 kB line that arrives with its newline is refused too, not only a partial one."""
    with pytest.raises(AgiProtocolError, match="too long"):
        HeaderParser().feed(b"agi_x: " + b"a" * 12000 + b"\nagi_y: 1\n\n")


def test_header_block_size_limit():
    """Lines under MAX_LINE and fewer than MAX_HEADER_LINES still cannot add up past
    MAX_HEADER_BYTES (a 195 x 7 kB block held 1.4 MB per connection)."""
    line = b"agi_x%03d: " + b"a" * 7000 + b"\n"
    parser = HeaderParser()
    with pytest.raises(AgiProtocolError, match="too large"):
        for i in range(195):
            parser.feed(line % i)
    assert i * len(line % 0) <= MAX_HEADER_BYTES


def test_unknown_callerid_is_empty():
    env = HeaderParser().feed(b"agi_callerid: unknown\n\n")
    assert env is not None and env.callerid == ""


# ------------------------------------------------------------------ commands


def test_format_command_quotes_every_argument():
    assert format_command("STREAM FILE", "hello-world", "") == b'STREAM FILE "hello-world" ""\n'
    assert format_command("GET DATA", "ask", 5000, 4) == b'GET DATA "ask" "5000" "4"\n'
    assert format_command("ANSWER") == b"ANSWER\n"


def test_quote_escapes_quotes_and_backslashes():
    assert quote_argument('say "hi"') == '"say \\"hi\\""'
    assert quote_argument("a\\b") == '"a\\\\b"'


@pytest.mark.parametrize("bad", ["x\nHANGUP", "x\r", "x\0"])
def test_arguments_cannot_inject_a_second_command(bad):
    with pytest.raises(ValueError):
        format_command("VERBOSE", bad)


@pytest.mark.parametrize("name", ["stream file", "EXEC;", "", "GET  DATA\n"])
def test_command_names_are_checked(name):
    with pytest.raises(ValueError):
        format_command(name)


# ------------------------------------------------------------------ replies


@pytest.mark.parametrize(
    ("line", "result", "data", "extras"),
    [
        ("200 result=0", "0", None, {}),
        ("200 result=-1", "-1", None, {}),
        ("200 result=1234", "1234", None, {}),
        ("200 result= (timeout)", "", "timeout", {}),
        ("200 result=12 (timeout)", "12", "timeout", {}),
        ("200 result=0 endpos=8000", "0", None, {"endpos": "8000"}),
        ("200 result=49 (dtmf) endpos=1600", "49", "dtmf", {"endpos": "1600"}),
        ("200 result=1 (value with spaces)", "1", "value with spaces", {}),
        ("200 result=1 (f(x) = (a) b)", "1", "f(x) = (a) b", {}),
        (
            "200 result=1 (ends with ) endpos=3) endpos=9",
            "1",
            "ends with ) endpos=3",
            {"endpos": "9"},
        ),
        ("200 result=1 ()", "1", "", {}),
    ],
)
def test_parse_result_line(line, result, data, extras):
    reply = parse_result_line(line)
    assert (reply.code, reply.result, reply.data, dict(reply.extras)) == (200, result, data, extras)
    assert reply.raw == line


@pytest.mark.parametrize("line", ["200 result", "200 result=1 (unclosed", "200 result=1 junk"])
def test_malformed_result_lines(line):
    with pytest.raises(AgiProtocolError):
        parse_result_line(line)


def test_reply_parser_splits_partial_chunks():
    parser = ReplyParser()
    assert parser.feed(b"200 res") == []
    assert parser.feed(b"ult=0 endp") == []
    (reply,) = parser.feed(b"os=5\r\n")
    assert isinstance(reply, Reply) and reply.extras == {"endpos": "5"}


def test_reply_parser_hangup_line_between_replies():
    items = ReplyParser().feed(
        b"200 result=-1\nHANGUP\n511 Command Not Permitted on a dead channel\n"
    )
    assert isinstance(items[0], Reply) and items[0].result == "-1"
    assert isinstance(items[1], HangupNotice)
    assert isinstance(items[2], Reply) and items[2].code == 511


def test_multiline_520_is_one_reply():
    data = (
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b" Usage: STREAM FILE <filename> <escape digits> [sample offset]\n"
        b"520 End of proper usage.\n"
        b"200 result=0\n"
    )
    items = ReplyParser().feed(data)
    assert len(items) == 2
    usage = items[0]
    assert isinstance(usage, Reply) and usage.code == 520
    assert "Usage: STREAM FILE" in usage.usage
    assert isinstance(items[1], Reply) and items[1].result == "0"


def test_multiline_520_split_across_chunks():
    parser = ReplyParser()
    assert parser.feed(b"520-Invalid command syntax.  Proper usage follows:\n Usage: X") == []
    assert parser.feed(b"\n") == []
    (usage,) = parser.feed(b"520 End of proper usage.\n")
    assert isinstance(usage, Reply) and usage.usage == " Usage: X"


def test_100_trying_and_single_line_errors():
    items = ReplyParser().feed(b"100 result=0 Trying...\n510 Invalid or unknown command\n")
    assert [i.code for i in items if isinstance(i, Reply)] == [100, 510]


@pytest.mark.parametrize("data", [b"hello there\n", b"2000 result=1\n", b"20\n"])
def test_garbage_reply_lines_raise(data):
    with pytest.raises(AgiProtocolError):
        ReplyParser().feed(data)


def test_reply_line_length_limit():
    with pytest.raises(AgiProtocolError):
        ReplyParser().feed(b"200 result=" + b"1" * 10000)


def test_reply_line_limit_applies_to_complete_lines():
    with pytest.raises(AgiProtocolError, match="too long"):
        ReplyParser().feed(b"200 result=1 (" + b"v" * 12000 + b")\n")


def test_long_520_usage_is_refused():
    """A 520- reply that never ends is cut at MAX_USAGE bytes (300 MB of lines grew the
    server by 370 MB)."""
    parser = ReplyParser()
    parser.feed(b"520-Invalid command syntax.  Proper usage follows:\n")
    block = b" usage line\n" * 1000
    with pytest.raises(AgiProtocolError, match="usage text too long"):
        for _ in range(MAX_USAGE // len(block) + 2):
            parser.feed(block)


def test_usage_limit_is_per_reply():
    parser = ReplyParser()
    text = b" " + b"u" * 1000 + b"\n"
    reply = b"520-Invalid\n" + text * (MAX_USAGE // len(text) - 1) + b"520 End\n"
    for _ in range(3):
        (item,) = parser.feed(reply)
        assert isinstance(item, Reply) and item.code == 520


def test_line_without_newline_in_520_is_refused_past_the_limit():
    """Inside a 520 reply the limit was not applied at all: 120 MB without a newline were
    buffered (and rescanned on every read)."""
    parser = ReplyParser()
    parser.feed(b"520-Invalid command syntax.  Proper usage follows:\n")
    fed = 0
    with pytest.raises(AgiProtocolError, match="too long"):
        while fed < 10 * MAX_LINE:
            parser.feed(b"x" * 4096)
            fed += 4096
    assert fed <= MAX_LINE + 4096


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes its newline searches look at."""

    scanned = 0

    def find(self, sub, start=0, *rest):  # type: ignore[override]
        found = super().find(sub, start, *rest)
        self.scanned += (found + 1 if found >= 0 else len(self)) - start
        return found


def test_line_buffer_scans_each_byte_once():
    lines = LineBuffer("test")
    lines._buffer = CountingBuffer()
    data = b"a" * (MAX_LINE - 1) + b"\n" + b"b" * 100 + b"\n"
    for byte in data:  # the worst case: one byte per read
        lines.feed(bytes([byte]))
        lines.next_line()
    assert lines._buffer.scanned <= len(data)


@pytest.mark.parametrize(
    ("name", "args", "seconds"),
    [
        ("SET VARIABLE", ("X", "1"), protocol.QUICK_REPLY),
        ("ANSWER", (), protocol.QUICK_REPLY),
        ("CHANNEL STATUS", (), protocol.QUICK_REPLY),
        ("STREAM FILE", ("hello", ""), protocol.PLAYBACK),
        ("SAY NUMBER", (12, ""), protocol.PLAYBACK),
        ("WAIT FOR DIGIT", (5000,), 5 + protocol.QUICK_REPLY),
        ("WAIT FOR DIGIT", (-1,), None),  # waits for ever: only the hard cap
        ("RECORD FILE", ("f", "wav", "#", 120_000, "BEEP"), 120 + protocol.QUICK_REPLY),
        ("RECORD FILE", ("f", "wav", "#", -1), None),
        # GET DATA: the prompt, then each key's wait (at least the channel's 10 s)
        ("GET DATA", ("ask", 5000, 16), protocol.PLAYBACK + 17 * protocol.DIGIT_WAIT),
        ("GET DATA", ("ask", 30_000, 4), protocol.PLAYBACK + 5 * 30),
        ("GET DATA", ("ask",), None),  # up to 1024 keys
        ("EXEC", ("Dial", "Local/1@x", "60"), None),  # the whole call
        ("GOSUB", ("ctx", "s", "1"), None),
    ],
)
def test_reply_allowance(name, args, seconds):
    assert reply_allowance(name, args) == seconds


def test_raise_for_reply_maps_codes():
    assert raise_for_reply("X", Reply(200, "0")).result == "0"
    with pytest.raises(AgiHangup):
        raise_for_reply("X", Reply(511, raw="511 dead"))
    with pytest.raises(AgiInvalidCommand):
        raise_for_reply("X", Reply(510, raw="510 bad"))
    with pytest.raises(AgiUsageError) as info:
        raise_for_reply("X", Reply(520, usage="Usage: X"))
    assert info.value.usage == "Usage: X"
    with pytest.raises(AgiProtocolError):
        raise_for_reply("X", Reply(404, raw="404 what"))
