"""meddx.explain."""

# NOTE TO THE IMPLEMENTER: read /tmp/brief_common.md first (team rules + spine API). Delete this note.
