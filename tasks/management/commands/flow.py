from django.core.management.base import BaseCommand, CommandError

from tasks.platform.models import FlowEvent, Pause, PauseScope
from tasks.platform.services.flow import UnknownTarget, flow_pause, flow_resume

#: flow events `flow status` lists, newest first
EVENTS_SHOWN = 20


class Command(BaseCommand):
    help = "Pause or resume a queue or a task (--queue NAME | --task NAME), or show the pauses (status)."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{pause,resume,status}")
        for action, what in (("pause", "pause"), ("resume", "resume")):
            sub = actions.add_parser(action, help=f"{what} a queue or a task")
            target = sub.add_mutually_exclusive_group(required=True)
            target.add_argument("--queue", help=f"the queue to {what}")
            target.add_argument("--task", help=f"the task to {what} (on every queue)")
        actions.add_parser("status", help="the current pauses and the last pauses and resumes")

    def handle(self, *args, action: str, **options) -> None:
        if action == "status":
            self._status()
            return
        scope, name = (PauseScope.QUEUE, options["queue"]) if options["queue"] else (PauseScope.TASK, options["task"])
        try:
            if action == "pause":
                pause = flow_pause(scope=scope, name=name, via="command")
                by = pause.by.get_username() if pause.by_id else "the system"
                self.stdout.write(
                    f"{scope} {name}: paused (by {by} via {pause.via} since {pause.at:%Y-%m-%d %H:%M:%S} UTC)"
                )
            else:
                released = flow_resume(scope=scope, name=name, via="command")
                self.stdout.write(f"{scope} {name}: resumed, {released} held job(s) released")
        except UnknownTarget as exc:
            raise CommandError(str(exc)) from exc

    def _status(self) -> None:
        pauses = list(Pause.objects.select_related("by"))
        self.stdout.write("paused:" if pauses else "paused: nothing")
        for pause in pauses:
            by = pause.by.get_username() if pause.by else "the system"
            self.stdout.write(
                f"  {pause.scope} {pause.name}: by {by} via {pause.via} since {pause.at:%Y-%m-%d %H:%M:%S} UTC"
            )
        events = list(FlowEvent.objects.select_related("by").order_by("-at", "-pk")[:EVENTS_SHOWN])
        self.stdout.write(
            f"latest pauses and resumes (at most {EVENTS_SHOWN}):" if events else "pauses and resumes: none yet"
        )
        for event in events:
            by = event.by.get_username() if event.by else "the system"
            self.stdout.write(
                f"  {event.at:%Y-%m-%d %H:%M:%S} UTC {event.scope} {event.name} {event.action} by {by} via {event.via}"
            )
