"""`python -m codemill.cli` (and `torchrun ... -m codemill.cli train`)."""

from codemill.cli import app

if __name__ == "__main__":  # not again in a spawned loader worker, which imports this as __mp_main__
    app()
