"""Datasets: readers of every supported format, the dual-view dataset, splits and augmentation."""

# The data source kinds of ``--data kind:path`` (``train.data.sources``); named here, free of
# imports, so building the command-line help loads no torch.
KINDS = (
    "ferplus",
    "ferpluscsv",
    "expw",
    "emotion6",
    "fer2013csv",
    "fer2013folder",
    "folder",
    "manifest",
    "unlabelled",
    "video",
)
