"""The randomized fault soak (issue #25): the platform as several hosts on this machine, under a
steady load, while faults are injected at random; then a report of what was lost, run twice, or
late. `make soak` runs the long version; tests/integration/test_soak.py a short, seeded one.

Hosts are network namespaces the soak creates (root only), joined by a bridge to a Redis and a
PostgreSQL of its own, so that it may kill, wipe and restart them without touching the machine's.
"""
