"""exfilwatch: find data leaks through email in the logs an organisation already keeps."""
__version__ = "0.1.0"
