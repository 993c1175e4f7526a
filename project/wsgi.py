import os

import django
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)

from tasks.platform import tracing  # noqa: E402 - reads the settings

# Before the handler builds its middleware chain: the Django instrumentation adds its own.
tracing.configure(tracing.WEB, web=True)
application = get_wsgi_application()
