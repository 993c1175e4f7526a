from tasks.models.jobs import Job, JobAction, JobAttempt
from tasks.models.tokens import ApiToken

__all__ = ["ApiToken", "Job", "JobAction", "JobAttempt"]
