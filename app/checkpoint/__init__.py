"""Run state on disk, in one place.

- ``weights``: a model in or out of any format (Sprout ``.ckpt``, sharded folders, Hugging Face);
- ``run``: the run's checkpoint files (atomic saves, ``last.ckpt``, keeping the newest N);
- ``resume``: which checkpoint a run continues from, and what a stored checkpoint holds;
- ``safe_load``: reading a checkpoint a user names without running code it carries.
"""
