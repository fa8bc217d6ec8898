"""A PostgreSQL with pgvector of its own, for the tests (PyPI pgserver bundles
both): started in a new temporary directory, its URI printed on the first line of
stdout; stopped and deleted when stdin closes (the test dropping its handle)."""

import sys
import tempfile

import pgserver

data = tempfile.mkdtemp(prefix="switchyard-pgvector-")
server = pgserver.get_server(data, cleanup_mode="delete")
server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
# pgserver's URI leaves the host empty (postgresql://postgres:@/postgres?host=DIR), which
# URL parsers refuse: name localhost, the socket directory in `host` still wins.
print(f"postgresql://postgres@localhost/postgres?host={data}", flush=True)
sys.stdin.read()
server.cleanup()
