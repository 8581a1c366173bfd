"""Stage 1: repositories in, a clean corpus out (paper §II)."""
