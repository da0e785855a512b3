"""The data layer's own error: a source that cannot be read, fetched or verified."""


class SourceError(RuntimeError):
    """A source (a corpus, an image folder, a table, an object) that cannot be read, fetched or
    verified; the message names it."""
