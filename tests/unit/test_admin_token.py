"""services/security.py: the admin token from the environment or from a mounted Secret file, re-read when
the file changes, failing closed (a token no client holds) when the configured file cannot be read."""

from __future__ import annotations

import logging
import os

from services.security import ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV, admin_token


def test_no_token_configured():
    assert admin_token({}) is None


def test_the_variable_wins_over_the_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("from-file")
    assert admin_token({ADMIN_TOKEN_ENV: "from-env", ADMIN_TOKEN_FILE_ENV: str(f)}) == "from-env"
    assert admin_token({ADMIN_TOKEN_ENV: "", ADMIN_TOKEN_FILE_ENV: str(f)}) == "from-file"


def test_the_file_is_stripped_and_re_read_when_it_changes(tmp_path):
    f = tmp_path / "token"
    f.write_text("first\n")
    env = {ADMIN_TOKEN_FILE_ENV: str(f)}
    assert admin_token(env) == "first"
    # A rotated Secret: the kubelet writes a new file and swaps it in (a new inode).
    new = tmp_path / "token.new"
    new.write_text("second-token\n")
    os.replace(new, f)
    assert admin_token(env) == "second-token"


def test_an_unreadable_or_empty_file_fails_closed_and_says_so(tmp_path, caplog):
    env = {ADMIN_TOKEN_FILE_ENV: str(tmp_path / "missing")}
    with caplog.at_level(logging.ERROR, logger="services.security"):
        a, b = admin_token(env), admin_token(env)
    assert a and b and a != b  # never None (that would open the admin routes), never predictable
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and ADMIN_TOKEN_FILE_ENV in errors[0].getMessage()
    assert "missing" in errors[0].getMessage()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert admin_token({ADMIN_TOKEN_FILE_ENV: str(empty)})
    empty.write_text("now-set")
    assert admin_token({ADMIN_TOKEN_FILE_ENV: str(empty)}) == "now-set"
