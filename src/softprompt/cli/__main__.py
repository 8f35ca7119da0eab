"""``python -m softprompt.cli ...`` (e.g. under ``accelerate launch``) runs the command line."""

from softprompt.cli import app

app()
