"""Development tools of the project, not imported by the platform."""
