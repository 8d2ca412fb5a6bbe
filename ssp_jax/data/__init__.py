"""Datasets: TFDS builders (stored as array_record, read without TensorFlow) and the micro world."""
