from django.core.management.base import BaseCommand, CommandError

from tasks.platform.models import Job
from tasks.platform.services.recovery import ActionRefused, job_discard, job_retry


class Command(BaseCommand):
    help = "Retry (or with --discard, discard) jobs by id, or every dead job with --all-dead."

    def add_arguments(self, parser) -> None:
        parser.add_argument("job_ids", nargs="*", help="job ids")
        parser.add_argument("--all-dead", action="store_true", help="every dead job not yet discarded")
        parser.add_argument("--discard", action="store_true", help="discard dead jobs instead of retrying")

    def handle(self, *args, job_ids: list[str], all_dead: bool, discard: bool, **options) -> None:
        if all_dead:
            job_ids = [
                *job_ids,
                *Job.objects.filter(state=Job.State.DEAD, discarded_at=None).values_list("pk", flat=True),
            ]
        if not job_ids:
            raise CommandError("name job ids, or --all-dead")
        service, done = (job_discard, "discarded") if discard else (job_retry, "retried")
        refused = 0
        for job_id in job_ids:
            try:
                service(job_id=job_id, via="command")
                self.stdout.write(f"{job_id}: {done}")
            except (ActionRefused, Job.DoesNotExist, ValueError) as exc:
                refused += 1
                self.stderr.write(f"{job_id}: not {done}: {exc or 'no such job'}")
        if refused:
            raise CommandError(f"{refused} of {len(job_ids)} job(s) not {done}")
