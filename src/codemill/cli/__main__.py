"""`python -m codemill.cli` (and `torchrun ... -m codemill.cli train`)."""

from codemill.cli import app

app()
