"""Registers the dataset readers. Factories are named by path so that listing plugins (and
this import) stays free of torch; recipes validate against the readers' signatures."""

from tta_core.plugin import hookimpl

READERS = ("jsonl", "audiocaps", "audioldm", "folder", "clotho", "webdataset")


@hookimpl
def tta_register(register):
    for name in READERS:
        register("dataset", name, f"tta_datasets.readers:{name}")
