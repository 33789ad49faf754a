"""tta's built-in dataset readers, a plugin like any other (see :mod:`tta_datasets.plugin`)."""
