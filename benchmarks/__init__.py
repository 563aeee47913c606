"""anchor-py's benchmark harness: `python -m benchmarks` (or `make bench`).

Every scenario runs on its own scratch database, created and dropped on the server given by
$DATABASE_URL (else 127.0.0.1:5432, else the embedded PostgreSQL). Each result is printed as one
JSON line as soon as it is measured; a table and the target ratios follow at the end.
See docs/performance.md for the method and a recorded run.
"""
