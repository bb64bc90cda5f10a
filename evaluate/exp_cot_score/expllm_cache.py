# Generated from dataset_builders/exp_cot/cache.py by `python -m model_card.bundle`: do not edit.
"""The engine's response cache: an SQLite file mapping a request to the LLM's reply, so no request is sent twice.

A request is keyed by the SHA-256 of its canonical JSON: the model, the messages and every parameter that shapes the
answer (temperature, seed, token limit). Neither the endpoint nor the API key is part of the key, and nothing about
them is stored: only the key and the reply. SQLite commits each entry atomically, so a run killed at any moment
(SIGKILL included) leaves every entry either whole or absent, and a resumed run finds the replies already paid for.
"""

import hashlib
import json
import sqlite3
import time
from pathlib import Path


def request_key(model, messages, parameters):
    """The cache key of a chat request: hex SHA-256 of {model, messages, parameters} as canonical JSON."""
    canonical = json.dumps(
        {"model": model, "messages": messages, "parameters": parameters},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """{request key: reply dict} on disk. Use as a context manager or call `close()`."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(self.path)
            # WAL: a commit is one append to the log, and a killed writer never corrupts the database. synchronous=
            # NORMAL keeps every commit through a process kill (only a power cut can lose the latest ones).
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS responses "
                "(key TEXT PRIMARY KEY, reply TEXT NOT NULL, created REAL NOT NULL)"
            )
            self._connection.commit()
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a usable response cache ({error})") from error

    def get(self, key):
        row = self._connection.execute("SELECT reply FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key, reply):
        with self._connection:  # one transaction: committed on exit
            self._connection.execute(
                "INSERT OR REPLACE INTO responses (key, reply, created) VALUES (?, ?, ?)",
                (key, json.dumps(reply, ensure_ascii=False), time.time()),
            )

    def keys(self):
        return {row[0] for row in self._connection.execute("SELECT key FROM responses")}

    def __len__(self):
        return self._connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self):
        self._connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
