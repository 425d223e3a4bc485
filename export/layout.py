"""Where an exported version keeps its files, relative to <model_base>/<name>/<version>/.

Plain strings and no imports, so readers (clients, Beam workers, the test server) can use
them without loading TensorFlow.
"""
LABELS_FILE = "labels.txt"
METADATA_FILE = "fcnseg_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for

LABELS_PATH = f"assets/{LABELS_FILE}"
METADATA_PATH = f"assets.extra/{METADATA_FILE}"
WARMUP_PATH = f"assets.extra/{WARMUP_FILE}"
