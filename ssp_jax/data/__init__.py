"""Datasets: answer lists, gold/answer types, QA benchmarks, TFDS builders (stored as array_record,
read without TensorFlow) and the wiki rehearsal's offline Wikipedia paragraphs."""
