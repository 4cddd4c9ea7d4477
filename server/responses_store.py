"""Stored responses of /v1/responses (`store: true`, the default): one SQLite file (the standard library's
sqlite3), so that GET /v1/responses/{id} and `previous_response_id` work after a restart too.

Each row keeps the response object and the conversation up to it (chat messages: earlier turns, this input,
this output), which is what a `previous_response_id` continues from. The file is bounded: a row expires after
`responses_ttl`, and the oldest rows go first past `responses_max_count` rows or `responses_max_bytes` bytes.
Every sqlite call runs on the store's one worker thread (its connection lives there): never on the event loop.
The file is opened on first use, so an app that never stores a response creates nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    size INTEGER NOT NULL,
    response TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_created ON responses (created);
"""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # chat messages up to and including this response's output


class ResponseStore:
    def __init__(self, path: Path, *, ttl: float, max_count: int, max_bytes: int):
        self.path = Path(path)
        self.ttl = ttl  # seconds; math.inf: never expires
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ortserve-responses")
        self._db: sqlite3.Connection | None = None  # opened in the worker thread

    # ---- the async interface (the event loop's side) --------------------------------------------------
    async def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        await self._call(self._put, response, conversation)

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response and its conversation; None when unknown, deleted or expired."""
        return await self._call(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await self._call(self._delete, response_id)

    async def close(self) -> None:
        await self._call(self._close)
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # ---- the worker thread's side ------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; `with db` is one transaction
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def _put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        body = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
        messages = json.dumps(conversation, ensure_ascii=False, separators=(",", ":"))
        size = len(body.encode()) + len(messages.encode())
        if size > self.max_bytes:
            log.warning(
                "response %s is not stored: %d bytes, more than responses_max_bytes (%d)",
                response["id"],
                size,
                self.max_bytes,
            )
            return
        now = time.time()
        expires = now + self.ttl if math.isfinite(self.ttl) else math.inf
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO responses (id, created, expires, size, response, conversation) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (response["id"], now, expires, size, body, messages),
            )
            self._prune(db, now)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        """Expired rows, then the oldest past max_count rows or max_bytes bytes."""
        db.execute("DELETE FROM responses WHERE expires <= ?", (now,))
        count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        if count <= self.max_count and total <= self.max_bytes:
            return
        doomed = []
        for row_id, size in db.execute("SELECT id, size FROM responses ORDER BY created, id"):
            if count <= self.max_count and total <= self.max_bytes:
                break
            doomed.append((row_id,))
            count, total = count - 1, total - size
        db.executemany("DELETE FROM responses WHERE id = ?", doomed)

    def _get(self, response_id: str) -> StoredResponse | None:
        row = (
            self._connection()
            .execute(
                "SELECT response, conversation FROM responses WHERE id = ? AND expires > ?", (response_id, time.time())
            )
            .fetchone()
        )
        return None if row is None else StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def _delete(self, response_id: str) -> bool:
        cursor = self._connection().execute(
            "DELETE FROM responses WHERE id = ? AND expires > ?", (response_id, time.time())
        )
        return cursor.rowcount > 0

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
