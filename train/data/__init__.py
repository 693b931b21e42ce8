"""Datasets: readers of every supported format, the dual-view dataset, splits and augmentation."""
