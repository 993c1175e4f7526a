"""The test suite's fixtures (tests/fixtures.py) for every test directory: tests/ and each domain's
tasks/<domain>/tests/."""

pytest_plugins = ["tests.fixtures"]
