"""The fast tier (issue #22): the job engine's transitions, each with its precondition and outcome,
run in-process against a real database and Redis, with no worker, beat or web process.

Every test runs once per engine implementation: the reference ORM engine on any database, and the
PostgreSQL engine (COPY insert, one-statement begin_attempt and succeed) on PostgreSQL, so both
are held to one contract. test_engine_races.py runs transitions on two connections at once.
`make test-fast` runs this tier with the unit tests; `make test` runs it with everything else.
"""
