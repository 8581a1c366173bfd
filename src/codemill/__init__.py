"""codemill: the aiXcoder-7B training system, open: curate, data, train, eval, serve."""

__version__ = "0.1.0"
