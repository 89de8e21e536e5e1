"""The evidence journal: one hash chain over every event, checkpoints, archives, retention.

``sealer`` seals events into batches chained to each other (``canonical`` says which
bytes are hashed, ``merkle`` how); ``checkpoints`` signs the chain's head and has it
timestamped (``tsa``); ``check`` holds the checks that ``verify`` runs on the database
and ``archive`` on an exported archive (which it also writes); ``retention`` prunes
what its rules allow, archiving first, and its legal holds stop it where the law says
so; ``duty`` runs sealing, checkpoints and retention in the reconciler.
docs/journal-evidence.md says what each part proves and to whom.
"""
