"""Data filtering before fine-tuning: ForgetFilter (:mod:`.forget_filter`) and a harmfulness judge (:mod:`.judge`)."""
