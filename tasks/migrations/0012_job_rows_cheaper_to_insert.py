"""Two changes that leave PostgreSQL less work for each new job row:

- New jobs' ids are time-ordered (UUIDv7): each lands at the right edge of the primary key's
  index instead of on a random page of it. The default is Python's alone (the column has none),
  so only the model's state changes: on SQLite, altering the field would rebuild the table and
  drop the triggers of 0011.
- The index of a schedule's runs holds only schedules' jobs (origin ``beat:...``), not every job.
"""

import uuid_utils.compat
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tasks', '0011_job_owner_checked_a_statement'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='job',
                    name='id',
                    field=models.UUIDField(default=uuid_utils.compat.uuid7, editable=False, help_text='Also the Celery task id, so a message and its ledger row are one job.', primary_key=True, serialize=False, verbose_name='id'),
                ),
            ],
        ),
        migrations.RemoveIndex(
            model_name='job',
            name='job_origin_created',
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('origin__startswith', 'beat:')), fields=['origin', '-created_at'], name='job_schedule_runs'),
        ),
    ]
