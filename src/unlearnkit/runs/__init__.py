"""The runners: one module per command, each taking resolved inputs and writing one results folder.

* :mod:`.folder`: the results-folder contract (staging, input checks, resume, publish) and :mod:`.lock` (one writer);
* :mod:`.inputs`: what the user named, resolved once into typed objects;
* :mod:`.unlearn` (``unlearn``, ``demo``), :mod:`.evaluate` (``eval``, ``general``), :mod:`.finetune`,
  :mod:`.bench`, :mod:`.audit`, :mod:`.sequence`, :mod:`.fuse`, :mod:`.export` (``data export``).

Submodules are imported where used, so that importing one runner loads only what it needs.
"""
