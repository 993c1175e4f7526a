"""Flower's one entry point (`make run`, docker-compose, tests): `python -m project.flower [flower options]`.

Flower as `celery -A project flower` runs it (FLOWER_* variables, flowerconfig.py, then the command
line), with the platform's retry, dead letters and ledger metrics; see tasks.platform.flower.server.
"""

from tasks.platform.flower.server import main

if __name__ == "__main__":
    main()
