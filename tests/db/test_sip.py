"""SIP trunks and softphone accounts (ivr.sip, `ivr sip ...`): what is stored, what is
refused, and the PJSIP objects Asterisk is given."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy import select, text

from ivr import sip
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.db.models import SipPhone, SipTrunk

KEY = b"k" * 32


@pytest.fixture
def fresh(db: Database) -> Database:
    upgrade(db.engine)
    return db


def dump(db: Database) -> str:
    """Every row of the two tables, as text."""
    with db.transaction() as s:
        rows = [*s.execute(text("SELECT * FROM sip_trunks")),
                *s.execute(text("SELECT * FROM sip_phones"))]
    return repr(rows)


def test_a_trunk_password_is_stored_encrypted_and_rendered_only_in_the_config(
        fresh: Database, tmp_path: Path):
    with fresh.transaction() as s:
        sip.add_trunk(s, "carrier", "sip.example.net", key=KEY, username="acct1",
                      password="s3cret-Pass", register=True, match=["203.0.113.0/24"],
                      outbound=True, prefix="00", strip=1)
    assert "s3cret-Pass" not in dump(fresh)
    with fresh.transaction() as s:
        path = sip.write_objects(s, tmp_path, key=KEY)
        assert sip.outbound(s) == sip.Outbound("carrier", "00", 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conf = path.read_text()
    assert "password = s3cret-Pass" in conf
    assert "[carrier-reg]\ntype = registration" in conf
    assert "match = 203.0.113.0/24" in conf
    assert "context = ivr-sip-inbound" in conf
    # Under another secret key the password cannot be read back: refused, not garbage.
    with fresh.transaction() as s, pytest.raises(sip.SipError, match="another secret key"):
        sip.render_pjsip(s, key=b"x" * 32)


def test_the_outbound_trunk_dials_digits_only_with_its_strip_and_prefix():
    trunk = sip.Outbound("carrier", "00", 1)
    assert trunk.dial("442071234567") == "PJSIP/0042071234567@carrier"
    for bad in ("4420&Local/x", "44,1", "44@evil", "44/1", "44;x", ""):
        with pytest.raises(sip.SipError):
            trunk.dial(bad)


def test_a_phone_keeps_only_its_md5_credential_and_reaches_only_the_lines(
        fresh: Database, tmp_path: Path):
    with fresh.transaction() as s:
        new = sip.add_phone(s, "alice", "15550001111")
    assert len(new.password) == sip.PASSWORD_LENGTH
    assert new.password not in dump(fresh)
    with fresh.transaction() as s:
        phone = s.scalar(select(SipPhone))
        assert phone is not None
        assert phone.md5_cred == sip.md5_cred("alice", new.password)
        conf = sip.render_pjsip(s, key=KEY)
    assert "context = ivr-sip-phones" in conf and "auth_type = md5" in conf
    assert f"md5_cred = {phone.md5_cred}" in conf
    assert "callerid = <15550001111>" in conf


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"name": "ivr-test"}, "not starting with"),
    ({"name": "a b"}, "a name is"),
    ({"host": "evil;host"}, "--host"),
    ({"port": 0}, "--port"),
    ({"username": "u"}, "together"),
    ({"register": True}, "--register needs"),
    ({"match": ["not-an-address"]}, "--match"),
    ({"prefix": "0a"}, "--prefix"),
    ({"strip": 20}, "--strip"),
    ({"username": "u", "password": "a;b"}, "--password"),
])
def test_bad_trunks_are_refused_and_nothing_is_stored(fresh: Database, kwargs, error):
    args = {"name": "carrier", "host": "sip.example.net", **kwargs}
    with pytest.raises(sip.SipError, match=error), fresh.transaction() as s:
        sip.add_trunk(s, args.pop("name"), args.pop("host"), key=KEY, **args)
    with fresh.transaction() as s:
        assert s.scalars(select(SipTrunk)).all() == []


def test_names_are_one_namespace_and_one_trunk_is_outbound(fresh: Database):
    with fresh.transaction() as s:
        sip.add_trunk(s, "carrier", "198.51.100.7", key=KEY, outbound=True)
        sip.add_phone(s, "desk")
    with fresh.transaction() as s, pytest.raises(sip.SipError, match="exists already"):
        sip.add_phone(s, "carrier")
    with fresh.transaction() as s, pytest.raises(sip.SipError, match="outbound one"):
        sip.add_trunk(s, "other", "198.51.100.8", key=KEY, outbound=True)
    with fresh.transaction() as s, pytest.raises(sip.SipNotFound):
        sip.remove_phone(s, "nobody")


def test_the_commands_add_list_and_remove(ivr_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IVR_ASTERISK_INSTANCE", "sip-cli-test")  # none runs: applied later
    added = json.loads(ivr_cli("sip", "phones", "add", "alice", "--callerid", "15550001111",
                               "--json"))
    assert added["name"] == "alice" and len(added["password"]) == sip.PASSWORD_LENGTH
    assert added["applied"] is False
    out = ivr_cli("sip", "trunks", "add", "carrier", "--host", "198.51.100.7",
                  "--username", "u1", "--password", "pw", "--outbound")
    assert out.startswith("trunk carrier added (198.51.100.7:5060)")
    listed = json.loads(ivr_cli("sip", "trunks", "list", "--json"))["trunks"]
    assert [(t["name"], t["outbound"]) for t in listed] == [("carrier", True)]
    assert "pw" not in json.dumps(listed)
    err = ivr_cli("sip", "phones", "remove", "bob", expect=1)
    assert err.strip() == "ivr: no phone 'bob'"
    assert ivr_cli("sip", "phones", "list").startswith("alice")
    ivr_cli("sip", "phones", "remove", "alice")
    assert ivr_cli("sip", "phones", "list").strip() == "no phones"
