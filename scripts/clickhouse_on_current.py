#!/usr/bin/env python3
"""Runs every statement the tests sent to ClickHouse 18.16 again on current ClickHouse.

The tests' server keeps each statement in system.query_log (scripts/clickhouse/users.xml).
After the tests, this reads the statements that succeeded there since a given moment,
keeps one of each shape (literals aside), and runs them, in the order first seen, on the
ClickHouse engine that the `chdb` package embeds, after applying the project's
ClickHouse migrations to a database of its own. The same SQL must run on both (the
native stack ships 18.16, docker-compose current ClickHouse); a statement that 18.16 took
and current ClickHouse refuses fails this check.

The tests of the sharded layout use their own database on a two-server cluster; their
statements run here in a database of their own too, laid out as one shard (the
migrations on the `_local` tables) of a cluster of the same name that this engine is
configured with, its one shard being itself, so the `Distributed` DDL runs for real.

Inserts send their rows in the request body (`INSERT INTO t(columns) FORMAT RowBinary`,
or `... VALUES` with bound values), which the log does not keep; for those, the columns
are checked to exist. The log's times are whole seconds, so statements of one second
may be out of order: CREATE statements run first.

    python3 scripts/clickhouse_on_current.py --port 8123 --since 1764250000
"""

import argparse
import json
import pathlib
import re
import sys
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
TEST_DATABASE = re.compile(r"\bsaas_test_\w+")
# The sharded layout's test database (tests/src/stack.rs), and the cluster it names.
CLUSTER_DATABASE = re.compile(r"\bsaas_test_cluster\b")
CLUSTER = "saas_usage"
# The tables a shard holds under the names a single server gives them
# (crates/metering/src/shards.rs).
SHARDED_TABLES = re.compile(r"\b(usage_events|usage_minutes)\b")
LOCAL_TABLE = re.compile(r"\b(usage_events|usage_minutes)_local\b")
# This engine as the only shard of the cluster: a shard at its own native port counts
# as local, so reads through the Distributed tables never leave the process.
ENGINE_CONFIG = f"""<clickhouse>
  <tcp_port>19000</tcp_port>
  <remote_servers><{CLUSTER}><shard><replica>
    <host>127.0.0.1</host><port>19000</port>
  </replica></shard></{CLUSTER}></remote_servers>
</clickhouse>
"""
# An insert whose rows travel in the request body, which the log does not keep.
BODY_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+([\w.`\"]+)\s*\(([^)]*)\)\s*(?:FORMAT\s+\w+|VALUES)\s*$",
    re.IGNORECASE | re.DOTALL,
)
CREATE = re.compile(r"^\s*CREATE\b", re.IGNORECASE)
FORMAT_CLAUSE = re.compile(r"\s+FORMAT\s+\w+\s*$", re.IGNORECASE)
# The check's own statements, and the tests' bookkeeping that names other databases.
SKIP = re.compile(r"system\.query_log|SYSTEM\s+FLUSH", re.IGNORECASE)


def logged_statements(port: int, since: int) -> list[str]:
    def run(sql: str) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=sql.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    run("SYSTEM FLUSH LOGS")
    rows = run(
        "SELECT query, min(event_time) AS first FROM system.query_log "
        f"WHERE type = 2 AND is_initial_query AND event_time >= toDateTime({int(since)}) "
        "GROUP BY query ORDER BY first FORMAT JSONEachRow"
    )
    return [json.loads(line)["query"] for line in rows.decode().splitlines() if line]


def shape(sql: str) -> str:
    sql = TEST_DATABASE.sub("DB", sql)
    sql = STRING.sub("?", sql)
    sql = NUMBER.sub("N", sql)
    return " ".join(sql.split())


def on_current(sql: str) -> str:
    """The statement as current ClickHouse is to run it here."""
    sql = CLUSTER_DATABASE.sub("saas_cluster", sql)
    sql = TEST_DATABASE.sub("saas", sql)
    insert = BODY_INSERT.match(sql)
    if insert:
        table, columns = insert.groups()
        return f"SELECT {columns} FROM {table} LIMIT 0"
    # Results are not read here; the client's own output format is beside the point.
    return FORMAT_CLAUSE.sub("", sql.strip().rstrip(";"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--since", type=int, required=True, help="unix seconds")
    parser.add_argument("--min-statements", type=int, default=0)
    args = parser.parse_args()

    import tempfile

    import chdb

    statements = logged_statements(args.port, args.since)
    examples: dict[str, str] = {}
    for sql in statements:
        if not SKIP.search(sql):
            examples.setdefault(shape(sql), sql)

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="clickhouse-on-current-"))
    (scratch / "config.xml").write_text(ENGINE_CONFIG)
    db = chdb.connect(f"file:{scratch}/data?config-file={scratch}/config.xml")
    version = db.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
    migrations = sorted((ROOT / "migrations" / "clickhouse").glob("*.sql"))
    db.query("CREATE DATABASE IF NOT EXISTS saas_cluster")
    db.query("USE saas_cluster")
    for migration in migrations:
        db.query(SHARDED_TABLES.sub(r"\1_local", migration.read_text()))
    db.query("CREATE DATABASE IF NOT EXISTS saas")
    db.query("USE saas")
    for migration in migrations:
        db.query(migration.read_text())

    failures = []
    ordered = sorted(examples.values(), key=lambda sql: not CREATE.match(sql))
    for sql in ordered:
        # A shard's statements name its local tables, or the cluster's database.
        sharded = CLUSTER_DATABASE.search(sql) or LOCAL_TABLE.search(sql)
        try:
            db.query("USE saas_cluster" if sharded else "USE saas")
            db.query(on_current(sql))
        except Exception as error:  # chdb raises its own error type per failure
            failures.append((sql, str(error).splitlines()[0]))

    print(
        f"clickhouse on current: {len(statements)} statements from the tests, "
        f"{len(examples)} shapes, run on ClickHouse {version} (chdb {chdb.__version__}): "
        f"{len(examples) - len(failures)} ran, {len(failures)} refused"
    )
    for sql, error in failures:
        print(f"  refused: {' '.join(sql.split())[:300]}\n    {error[:300]}", file=sys.stderr)
    if len(statements) < args.min_statements:
        print(
            f"expected at least {args.min_statements} statements; is query_log on?",
            file=sys.stderr,
        )
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
