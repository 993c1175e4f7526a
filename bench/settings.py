"""Settings of a process whose SQL statements are counted (bench.statement_counter.counted_env):
the platform's own, with the counter installed. BENCH_STATEMENT_COUNTER_URL names its Redis."""

import os

from bench.statement_counter import URL_VARIABLE
from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.statement_counter.StatementCounter"]
#: where every statement of this process adds one to bench.statement_counter.COUNTER_KEY
STATEMENT_COUNTER_URL = os.environ[URL_VARIABLE]
