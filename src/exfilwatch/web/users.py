"""Local users of the console: names, roles, argon2 password hashes, and the login lock-out.

Users live in the home's state store (the `web` stage's table, migrated by whoever opens the
store for the console or the `users` commands). A role is `viewer` (reads), `analyst` (also
triages incidents and suppresses findings) or `admin` (also changes detections and users).
A login that fails `max_failures` times in a row locks the account for `lock_minutes`; the count
and the lock are in the store, so they hold across restarts and processes, and `now` is the
caller's. Every change to a user is recorded in the audit trail (never the password or its hash).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from exfilwatch import audit
from exfilwatch.errors import UsageError
from exfilwatch.state import StageSchema, StateStore

SCHEMA = StageSchema("web", (
    """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,                  -- viewer | analyst | admin
    password_hash TEXT NOT NULL,         -- argon2id, PHC string
    created TEXT NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,   -- in a row
    locked_until TEXT                    -- ISO 8601, while the lock-out lasts
);
""",
))

ROLES = ("viewer", "analyst", "admin")
OBJECT_TYPE = "user"
_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password anyone has")


class LoginRefused(Exception):
    """A login that did not succeed; the message is safe to show (it never says which part was wrong)."""


def _role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def _name(name: str) -> str:
    name = name.strip()
    if not name or any(ch.isspace() or not ch.isprintable() for ch in name) or len(name) > 64:
        raise UsageError(f"user name {name!r}: 1 to 64 printable characters, no spaces")
    return name


def list_users(state: StateStore) -> list[dict[str, Any]]:
    return [dict(row) for row in state.query(
        "SELECT name, role, created, failed_logins, locked_until FROM users ORDER BY name")]


def get_user(state: StateStore, name: str) -> dict[str, Any] | None:
    rows = state.query("SELECT name, role, created, failed_logins, locked_until FROM users WHERE name = ?", (name,))
    return dict(rows[0]) if rows else None


def add_user(state: StateStore, name: str, role: str, password: str, *, actor: str, now: datetime) -> None:
    name, role = _name(name), _role(role)
    if len(password) < 8:
        raise UsageError("a password needs at least 8 characters")
    if get_user(state, name) is not None:
        raise UsageError(f"user {name!r} exists; use `exfilwatch users set-role` or remove it first")
    with state.transaction() as db:
        db.execute("INSERT INTO users (name, role, password_hash, created) VALUES (?,?,?,?)",
                   (name, role, _hasher.hash(password), now.isoformat()))
        audit.record(state, actor=actor, now=now, action="add", object_type=OBJECT_TYPE, object_id=name,
                     after={"role": role})


def remove_user(state: StateStore, name: str, *, actor: str, now: datetime) -> None:
    user = _existing(state, name)
    with state.transaction() as db:
        db.execute("DELETE FROM users WHERE name = ?", (name,))
        audit.record(state, actor=actor, now=now, action="remove", object_type=OBJECT_TYPE, object_id=name,
                     before={"role": user["role"]})


def set_role(state: StateStore, name: str, role: str, *, actor: str, now: datetime) -> None:
    user, role = _existing(state, name), _role(role)
    with state.transaction() as db:
        db.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
        audit.record(state, actor=actor, now=now, action="set_role", object_type=OBJECT_TYPE, object_id=name,
                     before={"role": user["role"]}, after={"role": role})


def _existing(state: StateStore, name: str) -> dict[str, Any]:
    user = get_user(state, name)
    if user is None:
        raise UsageError(f"no user {name!r}; see `exfilwatch users list`")
    return user


def authenticate(state: StateStore, name: str, password: str, now: datetime, *, max_failures: int,
                 lock_minutes: float) -> dict[str, Any]:
    """The user, when `password` is theirs and the account is not locked; else LoginRefused.

    A failure counts towards the lock-out; a success resets the count.
    """
    rows = state.query("SELECT * FROM users WHERE name = ?", (name,))
    if not rows:
        _verify(_DUMMY_HASH, password)
        raise LoginRefused("wrong user name or password")
    user = dict(rows[0])
    if user["locked_until"] and now < datetime.fromisoformat(user["locked_until"]):
        raise LoginRefused("too many failed logins: this account is locked for a while; ask an admin")
    if not _verify(user["password_hash"], password):
        failures = user["failed_logins"] + 1
        locked = (now + timedelta(minutes=lock_minutes)).isoformat() if failures >= max_failures else None
        with state.transaction() as db:
            db.execute("UPDATE users SET failed_logins = ?, locked_until = ? WHERE name = ?",
                       (0 if locked else failures, locked, name))
            if locked:
                audit.record(state, actor=name, now=now, action="locked_out", object_type=OBJECT_TYPE,
                             object_id=name, after={"locked_until": locked, "failed_logins": failures})
        raise LoginRefused("wrong user name or password")
    if user["failed_logins"] or user["locked_until"]:
        with state.transaction() as db:
            db.execute("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = ?", (name,))
    return {"name": user["name"], "role": user["role"]}


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
