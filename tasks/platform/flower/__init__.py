"""The platform's additions to Flower, by extension, not a fork: a Retry button on the task page
and `POST /api/task/retry/<id>`, a Dead letters page, an Alerts page, and ledger gauges on `/metrics`.

Flower is started by `python -m project.flower` (see tasks.platform.flower.server), which runs Flower's own
option handling and app with these handlers added in front of Flower's.
"""
