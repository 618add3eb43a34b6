"""Data discovery, labels, synthetic data, preprocessing cache and datasets."""
