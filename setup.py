from setuptools import setup

# Metadata lives in pyproject.toml; this file exists because Beam's --setup_file wants one.
setup()
