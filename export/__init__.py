"""Export trained FCN-8s models as TF Serving SavedModels (see docs/export.md)."""
