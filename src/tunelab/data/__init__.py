"""Training data: image loading, folder scanning, aspect-ratio buckets and the dataset."""
